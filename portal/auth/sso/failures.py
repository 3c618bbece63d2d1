"""Why a directory sign-in failed, as the person signing in is told (and the HTTP status)."""

from flask_babel import lazy_gettext as _l

#: reason code (mapping.SignInRefused, the views) -> (message, status)
FAILURES = {
    "unavailable": (_l("The campus sign-in service cannot be reached. Please try again in a "
                       "few minutes."), 503),
    "unknown_user": (_l("Your campus account has no access to this portal yet. Please ask "
                        "the portal's administrators."), 403),
    "disabled": (_l("This account is disabled. Please ask the portal's administrators."), 403),
    "local_account": (_l("This name belongs to a local portal account: sign in with its "
                         "password."), 403),
    "other_source": (_l("This user name belongs to a portal account that signs in another "
                        "way, so your campus account cannot use it. Please ask the portal's "
                        "administrators to link the two accounts."), 403),
    "bad_uid": (_l("This campus account's user id cannot be used here. Please ask the "
                   "portal's administrators."), 403),
    "bad_ticket": (_l("The sign-in could not be confirmed: it has expired or is not valid. "
                      "Please sign in again."), 400),
    "replayed": (_l("This sign-in was already used. Please sign in again."), 400),
    "clock_skew": (_l("The sign-in could not be confirmed because the clocks of the portal "
                      "and the sign-in service disagree. Please tell the administrators."), 400),
    "denied": (_l("The sign-in was cancelled or refused by the sign-in service."), 400),
}
