#!/bin/sh
# compose.yaml mounts this as /docker-entrypoint.d/40-campus-portal.sh of the nginx image, which
# runs it before nginx starts: deploy/nginx.conf (mounted at /etc/campus-portal/nginx.conf)
# becomes /etc/nginx/nginx.conf with
#   - the image's worker user (nginx) instead of Debian's www-data;
#   - one upstream line per portal node of PORTAL_NODES ("portal-1:8000 portal-2:8000"): a node
#     that refuses or does not connect within 2 s (a stopped container's address answers
#     nothing) is left alone for 10 s and the request goes to the next one; the upstream's
#     state is shared by nginx's workers (zone), so one request finds a node down or back;
#   - HTTPS when TLS_CERTIFICATE and TLS_CERTIFICATE_KEY name files in the container: port 443
#     with them, and port 80 only redirecting there.
set -eu
source=/etc/campus-portal/nginx.conf
for literal in "user www-data;" "http {" "upstream portal {" "server 127.0.0.1:8000;" "listen 80;"; do
  grep -qF "$literal" "$source" || { echo "$0: $source has no '$literal' to replace" >&2; exit 1; }
done
servers=""
for node in ${PORTAL_NODES:?name the portal nodes: PORTAL_NODES="portal-1:8000 portal-2:8000"}; do
  servers="${servers}server ${node} max_fails=1 fail_timeout=10s;\n        "
done
tls=""
if [ -n "${TLS_CERTIFICATE:-}" ]; then
  [ -r "$TLS_CERTIFICATE" ] && [ -r "${TLS_CERTIFICATE_KEY:?TLS_CERTIFICATE needs TLS_CERTIFICATE_KEY}" ] || {
    echo "$0: cannot read $TLS_CERTIFICATE or $TLS_CERTIFICATE_KEY" >&2
    exit 1
  }
  tls="listen 443 ssl;\n        ssl_certificate $TLS_CERTIFICATE;\n        ssl_certificate_key $TLS_CERTIFICATE_KEY;\n        ssl_protocols TLSv1.2 TLSv1.3;\n        ssl_session_cache shared:portal_tls:10m;"
fi
awk -v servers="$servers" -v tls="$tls" '
  $0 == "user www-data;" { print "user nginx;"; next }
  $0 == "http {" { print; print "    proxy_connect_timeout 2s;"; next }
  $1 == "upstream" && $2 == "portal" { print; print "        zone portal_nodes 64k;"; next }
  $1 == "server" && $2 == "127.0.0.1:8000;" { sub(/server 127\.0\.0\.1:8000;/, servers) }
  tls != "" && $1 == "server" && $2 == "{" && !redirected {
    print "    server {"
    print "        listen 80;"
    print "        server_name _;"
    print "        return 301 https://$host$request_uri;"
    print "    }"
    redirected = 1
  }
  tls != "" && $1 == "listen" && $2 == "80;" { sub(/listen 80;/, tls) }
  { print }' "$source" >/etc/nginx/nginx.conf
