"""The console feature: the SSH concentrator and the log service (session logs, kernel logs)."""

import warnings

# asyncssh (the concentrator) still names cryptography's DSA classes when it is imported, and
# cryptography warns at each of those five lines: about twenty lines of "DSA is deprecated" on
# every `warden up`, none of them caused by the user (warden offers no DSA keys). This package
# is always imported before its concentrator module imports asyncssh, so the filter is in
# place in time. It matches that message only, raised from asyncssh's own modules; the category
# is cryptography's CryptographyDeprecationWarning, a UserWarning subclass, named here by its
# base so that `warden logs` and friends do not import cryptography for nothing.
warnings.filterwarnings(
    "ignore",
    message="DSA is deprecated",
    category=UserWarning,
    module=r"asyncssh(\.|$)",
)
