"""What the extension's routes use, built from a Flask app's config without touching the
disk or the database: init_app must leave a host app's directories alone. The files (token
secret, PKI, OpenVPN configs) and the database schema are made by `prepare`, which the
migrate command (`flask vpnagent migrate`, `vpnagent-server migrate`) and `serve` run; until
then `not_ready` says what is missing and which command fixes it."""
from __future__ import annotations

import hashlib
import ipaddress
import secrets
from collections.abc import Mapping
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .config import SCHEMA, ServerConfigError, default, flask_key, setting
from .datadir import private_data_dir
from .directory import Directory, StoreDirectory
from .events import Hub
from .ovpn import DEFAULT_PROFILE, VANTAGE6_NODE_PROFILE, Profile, VPNSettings
from .pki import PKI, fingerprint, write_private
from .store import Store
from .tokens import TokenService
from .v6directory import VANTAGE6_CERT_DAYS, Vantage6Config, load_vantage6_config
from .vpnserver import OpenVPNFiles

if TYPE_CHECKING:
    from .schema import Step  # alembic: imported when migrating, not with the package

MIGRATE_HINT = ("run `flask --app <your app> vpnagent migrate` (standalone: `vpnagent-server migrate --config "
                "<server.yaml>`)")


class ExtensionState:
    """The store, PKI, token service and OpenVPN files of one app. The store is an engine
    that has not connected yet; the rest are loaded on first use, which comes after
    `prepare` has made them."""

    def __init__(self, data_dir: Path, database_url: str, settings: VPNSettings, cert_days: float,
                 container_token_seconds: int, secret: str | None = None,
                 event_streams: int = default("api_event_streams"), data_plane: str = default("data_plane"),
                 vantage6: Vantage6Config | None = None) -> None:
        self.data_dir = data_dir
        self.vantage6 = vantage6  # set: a sidecar beside this vantage6 server (sidecar.py)
        self.data_plane = data_plane  # of every collaboration that sets none (config.DATA_PLANES)
        self.event_streams = event_streams
        self.store = Store(database_url, migrate=False)
        self.settings = settings
        self.cert_days = cert_days
        self._secret = secret
        self._container_seconds = container_token_seconds
        self._ready = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any], instance_path: str) -> ExtensionState:
        """The state the VPNAGENT_* keys of an app's config describe (server_ext/config.py);
        refuses a bad value before the app serves anything."""
        data_dir = Path(setting(config, "data_dir") or instance_path).resolve()
        v6_path = setting(config, "vantage6_config")
        vantage6 = load_vantage6_config(v6_path) if v6_path else None
        profile, cert_days = setting(config, "openvpn_profile"), setting(config, "cert_days")
        if vantage6 is not None:  # vantage6's nodes: their vpn-client, and no renewal but at start
            profile = profile if config.get(flask_key("openvpn_profile")) else VANTAGE6_NODE_PROFILE
            cert_days = cert_days if config.get(flask_key("cert_days")) is not None else VANTAGE6_CERT_DAYS
        try:
            settings = VPNSettings(
                subnet=ipaddress.IPv4Network(setting(config, "vpn_subnet")),
                remote_host=setting(config, "openvpn_remote_host"),
                remote_port=int(setting(config, "openvpn_remote_port")),
                proto=setting(config, "openvpn_proto"),
                profile=profile if isinstance(profile, Profile) else profile_from_config(profile),
                processes=int(setting(config, "openvpn_processes")),
                port_share=_host_port(setting(config, "openvpn_port_share")),
            )
        except ValueError as exc:
            if isinstance(exc, ServerConfigError):
                raise
            raise ServerConfigError(f"the vpnagent extension's config: {exc}") from exc
        return cls(data_dir=data_dir,
                   database_url=setting(config, "database_url") or f"sqlite:///{data_dir / 'store.db'}",
                   settings=settings, cert_days=float(cert_days),
                   container_token_seconds=container_token_seconds(setting(config, "container_token_seconds")),
                   secret=setting(config, "secret"), event_streams=int(setting(config, "api_event_streams")),
                   data_plane=data_plane(setting(config, "data_plane")), vantage6=vantage6)

    @property
    def secret_path(self) -> Path:
        return self.data_dir / "secret"

    @cached_property
    def pki(self) -> PKI:
        return PKI(self.data_dir / "pki")

    @cached_property
    def tokens(self) -> TokenService:
        return TokenService(self.token_secret, {"container": self._container_seconds})

    @cached_property
    def directory(self) -> Directory:
        """Who callers are and what they may see (directory.py): this store, unless
        this is a vantage6 sidecar: then vantage6's tokens and tables."""
        if self.vantage6 is not None:
            from .v6directory import Vantage6Directory

            return Vantage6Directory(self.vantage6)
        return StoreDirectory(self.tokens)

    @cached_property
    def hub(self) -> Hub:
        """This process's reader of node events for the streams it holds (events.py)."""
        return Hub(self.store)

    @cached_property
    def files(self) -> OpenVPNFiles:
        return OpenVPNFiles(self.data_dir / "openvpn", self.pki, self.settings)

    @property
    def management_sockets(self) -> list[Path]:
        return OpenVPNFiles.socket_paths(self.data_dir / "openvpn", self.settings)

    def prepare(self, progress: Callable[[str], None] | None = None) -> list[Step]:
        """Make what the routes need, where missing: the data directory (0700, or tightened
        to it), the token secret (unless configured), the PKI and the OpenVPN files; then
        migrate the database. Running it again changes nothing but rewriting the OpenVPN
        files. Returns the migration steps applied."""
        private_data_dir(self.data_dir)
        if not self._secret and not self.secret_path.exists():
            write_private(self.secret_path, secrets.token_urlsafe(48))
        self.files.write_all()  # makes the PKI on first use
        steps = self.store.migrate(progress)
        self.check_same_identity()
        if self.vantage6 is not None:
            from .v6directory import probe

            probe(self.directory)
        self._ready = True
        return steps

    def check_same_identity(self) -> None:
        """Refuse to serve with a CA or token secret other than the one the replicas on this
        database use: every replica must accept the others' tokens and certificates, and a
        second CA would lock out every node it did not sign. The first replica to prepare
        claims them; the rest must bring copies (docs/operator-guide.md, "Scaling out")."""
        mine = {"ca_fingerprint": (fingerprint(self.pki.ca_pem), f"the CA ({self.data_dir / 'pki'})", "pki/"),
                "secret_sha256": (_digest(self.token_secret), "the token secret "
                                  + ("(the config's secret)" if self._secret else f"({self.secret_path})"),
                                  "the config's `secret` or the data directory's `secret` file")}
        serves = "vantage6" if self.vantage6 is not None else "vpnagent"  # the directory's name
        claimed = self.store.claim_identity("directory", serves)
        if claimed != serves:
            raise ReplicaMismatch(
                f"the database {self.store.url} holds the VPN state of a {claimed} server's nodes; this server would "
                f"serve {serves}'s (vantage6_config {'set' if self.vantage6 else 'unset'}): node ids of the two do "
                "not mix, so give it a database (and data_dir) of its own")
        for key, (value, what, copy) in mine.items():
            claimed = self.store.claim_identity(key, value)
            if claimed != value:
                raise ReplicaMismatch(
                    f"{what} differs from the one the other API servers on the database {self.store.url} use "
                    f"({key} {claimed[:23]}…, this server's {value[:23]}…): every API server on one database must "
                    f"share them; copy {copy} from the first server's data directory, or point this server at a "
                    "database of its own")

    @property
    def token_secret(self) -> str:
        return self._secret or self.secret_path.read_text().strip()

    def not_ready(self) -> str | None:
        """Why the routes cannot serve yet, with the command that fixes it; None once they
        can (remembered: a prepared app does not ask again)."""
        if self._ready:
            return None
        if not self._secret and not self.secret_path.exists():
            missing = f"its token secret ({self.secret_path}) does not exist"
        elif not (self.data_dir / "pki" / "ca.crt").exists():
            missing = f"its PKI ({self.data_dir / 'pki'}) does not exist"
        elif not self.store.is_current():
            missing = f"the database ({self.store.url}) is not at the newest schema"
        else:
            self._ready = True
            return None
        return f"the vpnagent extension is not set up: {missing}; {MIGRATE_HINT}"


class ReplicaMismatch(ServerConfigError):
    """This API server's CA or token secret is not the one the others on its database use."""


def _digest(secret: str) -> str:
    """What the database keeps of the token secret: enough to compare, nothing to sign with."""
    return hashlib.sha256(b"vpnagent-token-secret\0" + secret.encode()).hexdigest()


def profile_from_config(raw: dict | None) -> Profile:
    """The data-plane profile: the tuned default, with any field overridden by config."""
    if not raw:
        return DEFAULT_PROFILE
    fields = set(Profile.__dataclass_fields__)
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise ValueError(f"unknown openvpn_profile key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(fields))}")
    return replace(DEFAULT_PROFILE, **raw)


def container_token_seconds(value: Any) -> int:
    """The container token lifetime: at least 2 s, so a token outlives the request that
    fetched it; at most 7 days, so a leaked one is not good for long (the node renews tokens
    of live runs anyway)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 604_800:
        raise ServerConfigError(f"container_token_seconds is {value!r}; give whole seconds from 2 to 604800 "
                                f"(7 days), or leave it out for {default('container_token_seconds')}")
    return value


def data_plane(value: Any) -> str:
    """The server's default data plane. Checked here as well: an app embedding the extension
    sets VPNAGENT_DATA_PLANE without the YAML loader's checks, and a typo must not quietly
    become some plane."""
    problem = SCHEMA["data_plane"].check.problem(value) if isinstance(value, str) else "is not a string"
    if problem:
        raise ServerConfigError(f"data_plane is {value!r}: {problem} (or leave it out for "
                                f"{default('data_plane')})")
    return value


def _host_port(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    host, _, port = str(value).rpartition(":")
    return host, int(port)
