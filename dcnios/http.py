"""HTTP sessions whose TLS trust is the one the spec configures.

requests lets ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` replace a session's ``verify`` on every
request that does not pass ``verify`` itself. Many systems set those variables (Debian and Nix
images, conda), so a ``ca_bundle`` from the spec would silently be ignored there and a private CA
would fail verification. Proxies and the rest of the environment still apply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import requests

if TYPE_CHECKING:
    from requests.sessions import _Settings

__all__ = ["TrustedSession"]


class TrustedSession(requests.Session):
    """A session whose ``verify`` (True or a CA bundle path) is never overridden by the environment."""

    def merge_environment_settings(
        self, url: str | bytes | None, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> _Settings:
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if verify is None:
            settings["verify"] = self.verify
        return settings
