"""The demo's personal documents belong to the people their names say (portal/demo.py)."""

import re

from portal import demo


def test_personal_documents_name_only_their_owner():
    people = {username: name for username, name, _, _ in demo.USERS}
    personal = [(title, filename, access.removeprefix("user:"))
                for title, filename, _, access, _ in demo.DOCUMENTS
                if access.startswith("user:")]
    assert len(personal) >= 4
    for title, filename, owner in personal:
        assert people[owner] in title, (title, owner)
        others = [other for other in people if other != owner]
        for other in others:
            # neither another person's name nor their student number (a username)
            assert people[other] not in title + filename, (filename, other)
            assert other not in filename, (filename, other)
        # a student number in the name is the owner's own
        assert set(re.findall(r"\d{7}", filename)) <= {owner}, (filename, owner)
