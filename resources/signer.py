"""The signer resource: where the keys of `modelsmith.engines.signer` and `modelsmith.model_signature` live."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from modelsmith.engines.signer import Ed25519Signer
from modelsmith.home import modelsmith_home
from modelsmith.store import Home


class SignerSettings(dg.ConfigurableResource):
    """Where the signing key lives (default: MODELSMITH_HOME/keys)."""

    key_dir: str = Field("", description="Directory of ed25519.key / ed25519.pub and model-signing-p256.key / .pub "
                                         "(default: MODELSMITH_HOME/keys)")

    def signer(self) -> Ed25519Signer:
        return Ed25519Signer(self._dir())

    def model_signing_key(self):
        """The P-256 key beside the Ed25519 one that signs model directories in the OpenSSF model-signing
        format (`modelsmith.model_signature`: why a second key rather than P-256 everywhere)."""
        from modelsmith.model_signature import ModelSigningKey

        return ModelSigningKey(self._dir())

    def _dir(self) -> Path:
        return Path(self.key_dir).expanduser() if self.key_dir else Home(modelsmith_home()).keys
