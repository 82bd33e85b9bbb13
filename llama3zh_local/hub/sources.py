"""The two hubs: which one a run uses, what a repo holds, and where its files go on disk.

Hugging Face and ModelScope are reached through their own clients: ``HfApi.model_info`` with
``files_metadata=True`` (huggingface_hub) and ``HubApi.list_repo_files`` (modelscope_hub) list a
repo's files with sizes and checksums, and the clients' cache layouts are where the files go
(``models--org--name/{blobs,snapshots,refs}`` for Hugging Face,
``models/org--name/snapshots/<revision>/`` for ModelScope), so that files either tool downloaded
are reused. Everything is read from the environment when called (not at import), so
``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HUB_OFFLINE``, ``MODELSCOPE_ENDPOINT`` and the cache variables
take effect as a user sets them.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..catalog import Source
from ..errors import HubAccessError, Llama3zhError, ModelNotFoundError, NetworkError, UsageError
from ..files import userconfig
from .neterrors import first_line, network_cause

SOURCE_NAMES = {Source.HF: "Hugging Face", Source.MODELSCOPE: "ModelScope"}
PREFIXES = {
    "hf": Source.HF,
    "huggingface": Source.HF,
    "ms": Source.MODELSCOPE,
    "modelscope": Source.MODELSCOPE,
}
HF_DEFAULT_ENDPOINT = "https://huggingface.co"
MS_DEFAULT_ENDPOINT = "https://modelscope.cn"
HF_DEFAULT_REVISION = "main"
MS_DEFAULT_REVISION = "master"
PROBE_TIMEOUT = 3.0  # seconds the --source auto check waits for the Hugging Face endpoint
AUTO_SOURCE_TTL = 24 * 3600  # how long a --source auto decision is reused before checking again
API_TIMEOUT = 30.0
# One retry of a failed ModelScope listing (the client's default is 4 attempts over ~7 s, per
# repo: a dry run with no network took 20 s); MODELSCOPE_REPO_TREE_PAGE_MAX_ATTEMPTS overrides.
MS_LISTING_ATTEMPTS = 2
UNREACHABLE_TTL = 60.0  # seconds a hub that could not be reached is not asked again
log = logging.getLogger(__name__)


# -- which hub -----------------------------------------------------------------------------------


def hf_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or HF_DEFAULT_ENDPOINT).rstrip("/")


def ms_endpoint() -> str:
    value = os.environ.get("MODELSCOPE_ENDPOINT") or MS_DEFAULT_ENDPOINT
    if not value.lower().startswith(("http://", "https://")):
        value = "https://" + value
    return value.rstrip("/")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hf_offline() -> bool:
    """``HF_HUB_OFFLINE`` (huggingface_hub's switch): use cached files only."""
    return _truthy(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"))


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        return default


def probe_timeout() -> float:
    """Seconds ``--source auto`` waits for the HF endpoint (``$LLAMA3ZH_PROBE_TIMEOUT``)."""
    return _env_float("LLAMA3ZH_PROBE_TIMEOUT", PROBE_TIMEOUT)


@dataclass(frozen=True)
class SourceDecision:
    """The hub a run uses, and why."""

    source: Source | None  # None: offline, whichever cache has the files
    online: bool
    reason: str
    fallback: bool = False  # ModelScope because Hugging Face did not answer (--source auto)

    @property
    def summary(self) -> str:
        where = SOURCE_NAMES[self.source] if self.source else "local caches"
        mode = "" if self.online else " (offline: cached files only)"
        return f"source: {where}{mode}: {self.reason}"


def _parse_source(value: str, where: str) -> Source:
    key = value.strip().lower()
    if key in PREFIXES:
        return PREFIXES[key]
    raise UsageError(f"{where}: unknown source {value!r}", hint="use hf or modelscope")


def decide_source(
    *,
    requested: str = "auto",
    fixed: Source | None = None,
    model: str = "",
    remember: bool = True,
) -> SourceDecision:
    """Pick the hub once per run.

    An explicit setting wins (an ``hf:``/``ms:`` prefix, ``--source``, ``$LLAMA3ZH_SOURCE``, or
    ``source`` in the user config); ``HF_HUB_OFFLINE`` means cached files only; else a quick HEAD
    to the Hugging Face endpoint decides (ModelScope when it does not answer in time). That
    result is remembered in the user config for a day (not when ``remember`` is False).
    """
    explicit: tuple[Source, str] | None = None
    if fixed is not None:  # an hf: / ms: prefix on the model id
        prefix = "hf" if fixed is Source.HF else "ms"
        if requested not in ("auto", fixed.value):
            raise UsageError(
                f"{model} names {SOURCE_NAMES[fixed]}, but --source is {requested}",
                hint=f"drop --source, or the {prefix}: prefix",
            )
        explicit = (fixed, f"named in the model id ({prefix}:)")
    elif requested != "auto":
        explicit = (_parse_source(requested, "--source"), f"--source {requested}")
    elif env := os.environ.get("LLAMA3ZH_SOURCE", "").strip():
        if env.lower() != "auto":
            explicit = (_parse_source(env, "LLAMA3ZH_SOURCE"), f"LLAMA3ZH_SOURCE={env}")
    if explicit is None and (configured := userconfig.load().get("source")):
        if str(configured).lower() != "auto":
            where = userconfig.config_file()
            source = _parse_source(str(configured), str(where))
            explicit = (source, f"source = {configured} in {where}")
    if explicit is not None:
        source, why = explicit
        if source is Source.HF and hf_offline():
            return SourceDecision(Source.HF, False, f"{why}; HF_HUB_OFFLINE is set")
        return SourceDecision(source, True, why)
    if hf_offline():
        return SourceDecision(None, False, "HF_HUB_OFFLINE is set")
    endpoint = hf_endpoint()
    remembered = userconfig.load().get("auto_source")
    if isinstance(remembered, dict) and remembered.get("hf_endpoint") == endpoint:
        age = time.time() - float(remembered.get("checked_at", 0))
        with contextlib.suppress(ValueError, KeyError):
            if 0 <= age < AUTO_SOURCE_TTL:
                source = Source(remembered["source"])
                return SourceDecision(
                    source,
                    True,
                    f"{remembered.get('reason', 'checked earlier')} (checked {_ago(age)}; "
                    f"remembered in {userconfig.config_file()} for a day; --source overrides)",
                    fallback=source is Source.MODELSCOPE,
                )
    source, why = _probe(endpoint)
    if remember:
        with contextlib.suppress(OSError):
            userconfig.update(
                auto_source={
                    "source": source.value,
                    "reason": why,
                    "hf_endpoint": endpoint,
                    "checked_at": time.time(),
                }
            )
    return SourceDecision(source, True, why, fallback=source is Source.MODELSCOPE)


def _probe(endpoint: str) -> tuple[Source, str]:
    """HEAD the Hugging Face endpoint: any HTTP answer in time means it is usable."""
    import requests

    timeout = probe_timeout()
    t0 = time.monotonic()
    try:
        requests.head(endpoint + "/", timeout=(timeout, timeout), allow_redirects=False).close()
    except requests.Timeout:
        return Source.MODELSCOPE, f"{endpoint} did not answer within {timeout:g} s"
    except requests.RequestException as e:
        return Source.MODELSCOPE, f"{endpoint} is unreachable ({network_cause(e)})"
    return Source.HF, f"{endpoint} answered in {time.monotonic() - t0:.1f} s"


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.0f} h ago"


# -- what a repo holds ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    sha256: str | None = None
    git_oid: str | None = None  # git blob sha1, for small files kept outside LFS


@dataclass(frozen=True)
class Listing:
    source: Source
    repo_id: str
    revision: str
    commit: str | None
    files: tuple[RemoteFile, ...]
    online: bool


def api_timeout() -> float:
    return _env_float("LLAMA3ZH_HUB_TIMEOUT", API_TIMEOUT)


def list_remote(source: Source, repo_id: str, *, revision: str | None = None) -> Listing:
    """A repo's files with sizes and checksums, from the hub's own client.

    Raises:
        ModelNotFoundError, HubAccessError, NetworkError: mapped from the client's errors.
    """
    endpoint = hf_endpoint() if source is Source.HF else ms_endpoint()
    failed = _unreachable.get(endpoint)
    if failed is not None and time.monotonic() - failed[0] < UNREACHABLE_TTL:
        # a run asks for up to three repos: do not wait again for a host that just failed
        log.debug("not asking %s again: %s", endpoint, failed[1])
        again = NetworkError(str(failed[1]), hint=failed[1].hint)
        again.unreachable = True
        raise again
    try:
        if source is Source.HF:
            return _list_hf(repo_id, revision or HF_DEFAULT_REVISION)
        return _list_ms(repo_id, revision or MS_DEFAULT_REVISION)
    except NetworkError as e:
        if e.unreachable:
            _unreachable[endpoint] = (time.monotonic(), e)
        raise


# endpoint -> (when, the error): hosts this process could not connect to, lately
_unreachable: dict[str, tuple[float, NetworkError]] = {}


def _hf_setup() -> None:
    # Mirrors (HF_ENDPOINT) do not proxy Xet storage. Our own downloads never use Xet (plain
    # ranged GETs on resolve/ URLs); this keeps any huggingface_hub download in this process off
    # it too (the client reads the variable when it is first imported).
    if hf_endpoint() != HF_DEFAULT_ENDPOINT:
        os.environ.setdefault("HF_HUB_DISABLE_XET", "1")


def _list_hf(repo_id: str, revision: str) -> Listing:
    _hf_setup()
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hf_endpoint())
    try:
        info = api.model_info(
            repo_id, revision=revision, files_metadata=True, timeout=api_timeout()
        )
    except Exception as e:  # noqa: BLE001 - mapped to our errors, the original is chained
        raise _hf_error(e, repo_id) from e
    files = []
    for s in info.siblings or []:
        sha = str(s.lfs.sha256) if s.lfs is not None else None
        oid = None if sha else s.blob_id
        files.append(RemoteFile(s.rfilename, int(s.size or 0), sha, oid))
    return Listing(Source.HF, repo_id, revision, info.sha, tuple(files), True)


_NETWORK_ERROR_NAMES = {
    "ConnectError",
    "ConnectTimeout",
    "TimeoutException",
    "ReadTimeout",
    "ReadError",
    "RemoteProtocolError",
    "NetworkError",
    "ProxyError",
    "ConnectionError",
    "Timeout",
    "OfflineModeIsEnabled",
}


def _is_network_error(e: BaseException) -> bool:
    # huggingface_hub has moved from requests to httpx to httpx2: match by class name.
    return isinstance(e, (OSError, TimeoutError)) or any(
        cls.__name__ in _NETWORK_ERROR_NAMES for cls in type(e).__mro__
    )


def _hf_error(e: Exception, repo_id: str) -> Llama3zhError:
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    name = f"hf:{repo_id}"
    page = f"{hf_endpoint()}/{repo_id}"
    token_how = (
        f"accept the model's terms on {page}, create a read token at "
        "https://huggingface.co/settings/tokens and set it: export HF_TOKEN=hf_... "
        "(or run `hf auth login`)"
    )
    status = getattr(getattr(e, "response", None), "status_code", None)
    if isinstance(e, GatedRepoError):
        return HubAccessError(
            f"{name} is gated: access needs an accepted license and a token", hint=token_how
        )
    if isinstance(e, RevisionNotFoundError):
        return ModelNotFoundError(f"{name} has no such revision on Hugging Face")
    if isinstance(e, RepositoryNotFoundError):
        if status == 401:
            return HubAccessError(
                f"{name}: Hugging Face answered 401: the repo is gated or private (or does not "
                "exist) and no valid token was sent",
                hint=token_how + "; check the id with `llama3zh models`",
            )
        return ModelNotFoundError(
            f"{name} not found on Hugging Face ({hf_endpoint()})",
            hint="check the repo id (catalog aliases: `llama3zh models`)",
        )
    if isinstance(e, HfHubHTTPError) and status in (401, 403):
        return HubAccessError(
            f"{name}: Hugging Face refused access (HTTP {status})", hint=token_how
        )
    if isinstance(e, HfHubHTTPError) and status is not None:
        return NetworkError(
            f"{name}: Hugging Face answered HTTP {status} ({hf_endpoint()})",
            hint="try again later, or download from ModelScope: --source modelscope",
        )
    if _is_network_error(e):
        return _network_down(Source.HF, e, repo_id=repo_id, tries=1)
    return NetworkError(f"{name}: listing failed: {first_line(e)}", hint=_OTHER_SOURCE[Source.HF])


_OTHER_SOURCE = {
    Source.HF: "use ModelScope (fast in mainland China): --source modelscope, or a Hugging Face "
    "mirror: export HF_ENDPOINT=https://hf-mirror.com",
    Source.MODELSCOPE: "use Hugging Face instead: --source hf",
}


def _network_down(source: Source, e: BaseException, *, repo_id: str, tries: int) -> NetworkError:
    endpoint = hf_endpoint() if source is Source.HF else ms_endpoint()
    tried = "once" if tries == 1 else f"{tries} times"
    err = NetworkError(
        f"cannot reach {SOURCE_NAMES[source]} at {endpoint}: {network_cause(e)} "
        f"(asked for the file list of {repo_id}, tried {tried})",
        hint="check the network or proxy (HTTPS_PROXY); or " + _OTHER_SOURCE[source],
    )
    err.unreachable = True
    return err


def _ms_attempts() -> int:
    """How often the client tries a listing (its constants read the variable when imported)."""
    os.environ.setdefault("MODELSCOPE_REPO_TREE_PAGE_MAX_ATTEMPTS", str(MS_LISTING_ATTEMPTS))
    from modelscope_hub import constants

    return max(1, int(constants.REPO_TREE_PAGE_MAX_ATTEMPTS))


def ms_api() -> Any:
    _ms_attempts()
    from modelscope_hub import HubApi, HubConfig

    # A fresh config reads MODELSCOPE_ENDPOINT / MODELSCOPE_CACHE / the token now, not at import.
    return HubApi(config=HubConfig())


def _list_ms(repo_id: str, revision: str) -> Listing:
    tries = _ms_attempts()  # before the first import of modelscope_hub
    from modelscope_hub import errors as mserr

    api = ms_api()
    name = f"ms:{repo_id}"
    token_how = (
        f"accept the model's terms on {ms_endpoint()}/models/{repo_id}, create a token at "
        "https://modelscope.cn/my/myaccesstoken and set it: export MODELSCOPE_API_TOKEN=... "
        "(or run `modelscope login`)"
    )
    try:
        entries = api.list_repo_files(repo_id, "model", revision=revision, recursive=True)
    except mserr.NotExistError as e:
        raise ModelNotFoundError(
            f"{name} not found on ModelScope ({ms_endpoint()})",
            hint="check the repo id (catalog aliases: `llama3zh models`)",
        ) from e
    except (mserr.AuthenticationError, mserr.PermissionDeniedError) as e:
        raise HubAccessError(
            f"{name}: ModelScope refused access ({first_line(e)}): private or gated repo",
            hint=token_how,
        ) from e
    except (mserr.ServerError, mserr.RateLimitError) as e:
        raise NetworkError(
            f"{name}: ModelScope answered with an error ({first_line(e)})",
            hint="try again later, or download from Hugging Face: --source hf",
        ) from e
    except Exception as e:  # noqa: BLE001 - mapped to our errors, the original is chained
        if _is_network_error(e):
            raise _network_down(Source.MODELSCOPE, e, repo_id=repo_id, tries=tries) from e
        raise NetworkError(
            f"{name}: listing failed: {first_line(e)}", hint=_OTHER_SOURCE[Source.MODELSCOPE]
        ) from e
    files = tuple(
        RemoteFile(f.path, int(f.size or 0), (f.sha256 or "").lower() or None, None)
        for f in entries
        if not f.is_dir and f.path
    )
    if not files:
        raise ModelNotFoundError(
            f"{name} has no files on ModelScope (it does not exist, or is empty)",
            hint="check the repo id (catalog aliases: `llama3zh models`)",
        )
    return Listing(Source.MODELSCOPE, repo_id, revision, None, files, True)


# -- where files go: the hubs' cache layouts ------------------------------------------------------


def hf_cache_dir() -> Path:
    """huggingface_hub's cache, from the environment now (mirrors ``huggingface_hub.constants``)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if value := os.environ.get(var):
            return Path(os.path.expandvars(value)).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "huggingface",
    )
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def ms_cache_dir() -> Path:
    """modelscope's cache (``$MODELSCOPE_CACHE``, default ``~/.cache/modelscope``)."""
    value = os.environ.get("MODELSCOPE_CACHE")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "modelscope"


def hf_storage(repo_id: str) -> Path:
    return hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))


def _ms_root(repo_id: str, revision: str) -> Path:
    """Where modelscope keeps a repo's files (mirrors modelscope_hub's DownloadManager).

    Files an older modelscope (<= 1.37) downloaded, in ``models/<org>/<name___>``, are reused.
    """
    base = ms_cache_dir()
    org, name = repo_id.split("/", 1)
    for legacy in (
        base / "models" / org / name.replace(".", "___"),
        base / "hub" / "models" / org / name.replace(".", "___"),
    ):
        with contextlib.suppress(OSError):
            if legacy.is_dir() and any(legacy.iterdir()):
                return legacy
    return base / "models" / repo_id.replace("/", "--") / "snapshots" / revision


def _ms_lock(repo_id: str, name: str) -> Path:
    # The lock file modelscope_hub's DownloadManager takes for the same file, so the two tools
    # never write it at once.
    key = "\0".join(("modelscope-hub-download-lock-v2", "file", "model", repo_id, name))
    return ms_cache_dir() / ".lock" / f"file_{hashlib.sha256(key.encode()).hexdigest()}.lock"


@dataclass(frozen=True)
class Layout:
    dest: Path  # the verified file: an HF blob, or the ModelScope snapshot file
    pointer: Path  # what the store links to: the HF snapshot entry, or dest
    lock: Path
    url: str


def layout(listing: Listing, f: RemoteFile, ms_api: Any = None) -> Layout:
    if listing.source is Source.HF:
        storage = hf_storage(listing.repo_id)
        etag = f.sha256 or f.git_oid or hashlib.sha256(f.name.encode()).hexdigest()
        commit = listing.commit or listing.revision
        from huggingface_hub import hf_hub_url

        url = hf_hub_url(listing.repo_id, f.name, revision=commit, endpoint=hf_endpoint())
        lock = hf_cache_dir() / ".locks" / storage.name / f"{etag}.lock"
        blob = storage / "blobs" / etag
        return Layout(blob, storage / "snapshots" / commit / f.name, lock, url)
    root = _ms_root(listing.repo_id, listing.revision)
    if ms_api is not None:
        url = ms_api.legacy.get_download_url(listing.repo_id, "model", f.name, listing.revision)
    else:  # offline: never fetched
        url = f"{ms_endpoint()}/api/v1/models/{listing.repo_id}/repo?FilePath={quote(f.name)}"
    return Layout(root / f.name, root / f.name, _ms_lock(listing.repo_id, f.name), url)


def request_headers(source: Source) -> dict[str, str]:
    if source is Source.HF:
        from huggingface_hub.utils import build_hf_headers

        return dict(build_hf_headers(library_name="llama3zh"))
    from modelscope_hub import HubConfig

    headers = {"User-Agent": "llama3zh (modelscope-compatible)"}
    token = HubConfig().token
    if token:  # modelscope sends both: newer endpoints read the header, older ones the cookie
        headers["Authorization"] = f"Bearer {token}"
        headers["Cookie"] = f"m_session_id={token}"
    return headers


def list_cached(source: Source, repo_id: str, *, revision: str | None = None) -> Listing | None:
    """What a hub's cache holds of a repo (for offline runs); None when it holds nothing."""
    if source is Source.HF:
        storage = hf_storage(repo_id)
        rev = revision or HF_DEFAULT_REVISION
        ref = storage / "refs" / rev
        commit = ref.read_text().strip() if ref.is_file() else rev
        snap = storage / "snapshots" / commit
        if not snap.is_dir():
            return None
        files = []
        for p in sorted(snap.rglob("*")):
            if not p.is_file():
                continue
            etag = os.readlink(p).rsplit("/", 1)[-1] if p.is_symlink() else ""
            files.append(
                RemoteFile(
                    p.relative_to(snap).as_posix(),
                    p.stat().st_size,
                    etag if len(etag) == 64 else None,
                    etag if len(etag) == 40 else None,
                )
            )
        return Listing(source, repo_id, rev, commit, tuple(files), False) if files else None
    rev = revision or MS_DEFAULT_REVISION
    root = _ms_root(repo_id, rev)
    if not root.is_dir():
        return None
    files = [
        RemoteFile(p.relative_to(root).as_posix(), p.stat().st_size)
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and not p.name.endswith(".incomplete")
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    return Listing(source, repo_id, rev, None, tuple(files), False) if files else None
