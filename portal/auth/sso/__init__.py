"""Campus single sign-on: directory accounts (LDAP, CAS, OIDC) as portal users.

mapping.py turns what a directory says into a portal user (the one place that writes them);
ldap.py, cas.py and oidc.py each speak one protocol and return a DirectoryAccount.
"""
