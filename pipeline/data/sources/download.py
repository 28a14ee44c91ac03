"""Download, verify and unpack every dataset the project uses, safely and resumably.

Datasets are multi-gigabyte archives on old academic servers: transfers get cut, servers
ignore ``Range``, mirrors disappear and a tarball is untrusted input. So ``fetch`` does:

1. look the source up in the manifest (``sources.yaml`` beside this module, or a dict given
   by the caller): its files, each with URLs (primary first, then mirrors), filename, the
   published md5/sha256 and size where known, and the archive kind;
2. return at once if ``<root>/<name>/.densepipe-fetched.json`` records a completed fetch of
   the same files (idempotent: safe to call from every pipeline stage);
3. get each file, either from ``from_dir`` (clusters without internet) or with
   ``download_file`` into ``<root>/.downloads/<name>/``: streamed to ``<file>.part``, resumed
   with an HTTP ``Range`` request after an interruption (restarting if the server ignores it),
   retried with exponential back-off, mirrors tried in order. Size and checksum are verified
   *before* the file gets its final name. Files without a published checksum are pinned:
   their sha256 goes into ``<root>/.densepipe-pins.json`` on first download and every later
   download or ``from_dir`` copy must match it;
4. check every archive member (absolute paths, ``..``, links leaving the tree, device files)
   before writing anything, extract into a temporary sibling of ``<root>/<name>`` and rename
   it into place, after checking the dataset's expected layout. A half-extracted dataset
   never exists, and a failed re-fetch leaves the previous good copy untouched;
5. delete the downloaded archives (unless ``keep_archives``); a failure keeps them, so a retry
   does not download gigabytes again.

``densepipe download NAME [--root DIR] [--from DIR]`` calls ``fetch``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import posixpath
import re
import shutil
import tarfile
import time
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
import urllib3
import yaml

from pipeline.errors import DataError, DownloadError
from pipeline.params import parse_yaml
from pipeline.runtime.fsutil import atomic_path, write_text_atomic
from pipeline.runtime.progress import progress_bar

try:  # POSIX only; elsewhere concurrent fetches of one source are simply not serialised
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

MANIFEST_PATH = Path(__file__).with_name("sources.yaml")
PINS_NAME = ".densepipe-pins.json"
MARKER_NAME = ".densepipe-fetched.json"
DOWNLOADS_DIR = ".downloads"
ARCHIVE_KINDS = ("tar", "tgz", "zip", "none")
USER_AGENT = "densepipe-downloader/0.1 (+https://github.com/; python-requests)"
CHUNK = 1 << 20

_HEX = {"md5": re.compile(r"^[0-9a-f]{32}$"), "sha256": re.compile(r"^[0-9a-f]{64}$")}
# statuses worth retrying on the same URL; any other 4xx means "try the next mirror"
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


# --------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileSpec:
    """One downloadable file of a source, with what is known to verify it."""

    urls: tuple[str, ...]
    filename: str
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None
    archive: str = "none"

    @property
    def published(self) -> bool:
        """True when the authors published a checksum (otherwise the file gets pinned)."""
        return self.md5 is not None or self.sha256 is not None


@dataclass(frozen=True)
class Source:
    """A dataset as ``fetch`` sees it: files to get, and where its root lands once unpacked.

    ``urls``/``filename``/``md5``/``sha256``/``size``/``archive`` are those of the primary
    (first) file, for the common single-file case.
    """

    name: str
    files: tuple[FileSpec, ...]
    extracts_to: str = "."
    alternatives: tuple[str, ...] = ()
    layout: tuple[str, ...] = ()
    description: str = ""
    homepage: str | None = None

    @property
    def urls(self) -> tuple[str, ...]:
        return self.files[0].urls

    @property
    def filename(self) -> str:
        return self.files[0].filename

    @property
    def md5(self) -> str | None:
        return self.files[0].md5

    @property
    def sha256(self) -> str | None:
        return self.files[0].sha256

    @property
    def size(self) -> int | None:
        return self.files[0].size

    @property
    def archive(self) -> str:
        return self.files[0].archive


class UnknownSourceError(DownloadError, KeyError):
    """A source name that is not in the manifest (the message lists the known ones)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Manifest(dict[str, Source]):
    """``dict`` of sources whose missing-key error lists the names that do exist."""

    def __missing__(self, key: str) -> Source:
        known = ", ".join(sorted(self)) or "(none)"
        raise UnknownSourceError(f"unknown dataset source {key!r}; known sources: {known}")


def load_manifest(path: Path | None = None) -> dict[str, Source]:
    """Read and validate ``sources.yaml`` (or ``path``); errors name the file and the key."""
    path = Path(path) if path is not None else MANIFEST_PATH
    try:
        raw = parse_yaml(path.read_text())
    except FileNotFoundError as e:
        raise DataError(f"source manifest not found: {path}") from e
    except yaml.YAMLError as e:
        raise DataError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a mapping of source name -> entry")
    return Manifest(
        {name: source_from_dict(name, entry, where=str(path)) for name, entry in raw.items()}
    )


def source_from_dict(name: str, entry: Mapping[str, Any], *, where: str = "manifest") -> Source:
    """Build a validated ``Source`` from one manifest entry (YAML-shaped dict)."""
    key = f"{where}: {name}"
    if not isinstance(entry, Mapping):
        raise DataError(f"{key}: expected a mapping")
    if "files" in entry:
        raw_files = entry["files"]
        if not isinstance(raw_files, list) or not raw_files:
            raise DataError(f"{key}.files: expected a non-empty list")
        files = tuple(_file_from_dict(f, f"{key}.files[{i}]") for i, f in enumerate(raw_files))
    else:
        files = (_file_from_dict(entry, key),)
    names = [f.filename for f in files]
    if len(set(names)) != len(names):
        raise DataError(f"{key}.files: duplicate filenames {names}")
    extracts_to = _rel_path(entry.get("extracts_to", "."), f"{key}.extracts_to")
    alternatives = tuple(
        _rel_path(a, f"{key}.alternatives") for a in entry.get("alternatives") or ()
    )
    layout = tuple(_rel_path(p, f"{key}.layout") for p in entry.get("layout") or ())
    return Source(
        name=str(name),
        files=files,
        extracts_to=extracts_to,
        alternatives=alternatives,
        layout=layout,
        description=str(entry.get("description", "")),
        homepage=entry.get("homepage"),
    )


def _file_from_dict(d: Mapping[str, Any], key: str) -> FileSpec:
    urls = d.get("urls")
    if isinstance(urls, str):
        urls = [urls]
    if not urls or not all(isinstance(u, str) and re.match(r"^https?://", u) for u in urls):
        raise DataError(f"{key}.urls: expected a non-empty list of http(s) URLs, got {urls!r}")
    filename = d.get("filename") or posixpath.basename(urls[0].split("?")[0])
    if not filename or "/" in filename or "\\" in filename or filename in (".", ".."):
        raise DataError(f"{key}.filename: not a plain file name: {filename!r}")
    sums: dict[str, str | None] = {}
    for algo in ("md5", "sha256"):
        value = d.get(algo)
        if value is not None:
            value = str(value).strip().lower()
            if not _HEX[algo].match(value):
                raise DataError(f"{key}.{algo}: not a {algo} hex digest: {d.get(algo)!r}")
        sums[algo] = value
    size = d.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
        raise DataError(f"{key}.size: expected a positive byte count, got {size!r}")
    archive = str(d.get("archive", "none"))
    if archive not in ARCHIVE_KINDS:
        raise DataError(f"{key}.archive: {archive!r} is not one of {', '.join(ARCHIVE_KINDS)}")
    return FileSpec(tuple(urls), filename, sums["md5"], sums["sha256"], size, archive)


def _rel_path(value: Any, key: str) -> str:
    p = posixpath.normpath(str(value))
    if posixpath.isabs(p) or p == ".." or p.startswith("../"):
        raise DataError(f"{key}: must be a relative path inside the dataset dir: {value!r}")
    return p


def _resolve_manifest(
    manifest: Mapping[str, Source | Mapping[str, Any]] | str | os.PathLike | None,
) -> dict[str, Source]:
    if manifest is None:
        return load_manifest()
    if isinstance(manifest, (str, os.PathLike)):
        return load_manifest(Path(manifest))
    return Manifest(
        {
            name: s if isinstance(s, Source) else source_from_dict(name, s)
            for name, s in manifest.items()
        }
    )


# --------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------
@dataclass
class Digests:
    """Size and hex digests of one file (a digest is None when it was not computed)."""

    size: int
    md5: str | None = None
    sha256: str | None = None


class _Transient(Exception):
    """Worth retrying the same URL (connection cut, 5xx, truncated body)."""

    def __init__(self, msg: str, progressed: bool = False) -> None:
        super().__init__(msg)
        self.progressed = progressed


class _Permanent(Exception):
    """This URL will not give us the file (404, wrong size): move to the next mirror."""


def download_file(
    urls: list[str],
    dest: Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    size: int | None = None,
    retries: int = 4,
    backoff: float = 1.0,
    progress: bool = True,
    timeout: float = 60,
) -> Path:
    """Download ``dest`` from the first URL that works, resuming, retrying and verifying.

    The bytes go to ``dest.part`` and are renamed onto ``dest`` only once the size and the
    checksum match, so ``dest`` existing means "complete and verified". An existing ``dest``
    that verifies is returned as is. Raises DownloadError naming the file (and, on a
    checksum mismatch, the expected and actual digests; the bad ``.part`` is deleted).
    """
    path, _, _ = _download(
        list(urls),
        Path(dest),
        md5=md5,
        sha256=sha256,
        size=size,
        retries=retries,
        backoff=backoff,
        progress=progress,
        timeout=timeout,
    )
    return path


def _download(
    urls: list[str],
    dest: Path,
    *,
    md5: str | None,
    sha256: str | None,
    size: int | None,
    retries: int,
    backoff: float,
    progress: bool,
    timeout: float,
    want_sha256: bool = False,
    sha256_note: str = "",
) -> tuple[Path, Digests, str]:
    """``download_file``, also returning the digests and the URL the bytes came from."""
    if not urls:
        raise DownloadError(f"{dest.name}: no URL to download it from")
    md5 = md5.lower() if md5 else None
    sha256 = sha256.lower() if sha256 else None
    algos = _algos(md5, sha256, want_sha256)
    dest.parent.mkdir(parents=True, exist_ok=True)

    if dest.is_file():
        digests = hash_file(dest, algos)
        problem = _mismatch(dest.name, digests, md5, sha256, size, sha256_note)
        if problem is None:
            return dest, digests, str(dest)
        log.warning("%s exists but does not verify (%s); downloading again", dest, problem)
        dest.unlink()

    part = dest.with_suffix(dest.suffix + ".part")
    failures: list[str] = []
    mismatches: list[str] = []
    with requests.Session() as session:
        session.headers.update({"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
        for url in urls:
            attempt = 0
            while True:
                try:
                    _fetch_once(session, url, part, size, timeout, progress, dest.name)
                except _Permanent as e:
                    failures.append(f"{url}: {e}")
                    log.warning("%s: %s; trying the next mirror", url, e)
                    break
                except _Transient as e:
                    attempt = 0 if e.progressed else attempt + 1
                    if attempt > retries:
                        failures.append(f"{url}: {e} (gave up after {retries + 1} attempts)")
                        break
                    delay = backoff * 2 ** max(attempt - 1, 0)
                    log.warning("%s: %s; retrying in %.1f s", url, e, delay)
                    time.sleep(delay)
                    continue
                digests = hash_file(part, algos)
                problem = _mismatch(dest.name, digests, md5, sha256, size, sha256_note)
                if problem is None:
                    os.replace(part, dest)
                    return dest, digests, url
                part.unlink(missing_ok=True)
                mismatches.append(f"{problem} (downloaded from {url})")
                log.warning("%s; trying the next mirror", problem)
                break
    part_note = ""
    if part.exists():
        part_note = f"; partial download kept in {part} and resumed next time"
    if mismatches:
        raise DownloadError("; ".join(mismatches + failures))
    raise DownloadError(
        f"could not download {dest.name} from any of {len(urls)} URL(s): "
        + "; ".join(failures)
        + part_note
    )


def _fetch_once(
    session: requests.Session,
    url: str,
    part: Path,
    size: int | None,
    timeout: float,
    progress: bool,
    label: str,
) -> None:
    """One HTTP request that appends to (or restarts) ``part``; returns when it is complete."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        part.unlink()
        offset = 0
    if size is not None and offset == size:
        return  # a previous run got every byte but died before verifying
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        resp = session.get(url, headers=headers, stream=True, timeout=(timeout, timeout))
    except requests.RequestException as e:
        raise _Transient(f"request failed: {e}") from e
    with resp:
        code = resp.status_code
        if code == 416 and offset:
            total = _content_range_total(resp.headers.get("Content-Range", ""))
            if total == offset:
                return  # the .part already holds the whole file
            part.unlink()
            raise _Transient(f"server refused to resume at byte {offset}; restarting")
        if code in _TRANSIENT_STATUS:
            raise _Transient(f"HTTP {code}")
        if code not in (200, 206):
            raise _Permanent(f"HTTP {code} {resp.reason}")
        expected_total: int | None
        if code == 206:
            try:
                start, total = _content_range(resp.headers.get("Content-Range", ""))
            except _Transient:
                part.unlink(missing_ok=True)  # cannot tell where these bytes belong
                raise
            if start != offset:
                part.unlink(missing_ok=True)
                raise _Transient(f"server resumed at byte {start}, not {offset}; restarting")
            expected_total = total
        else:
            if offset:
                log.info("%s ignored the Range request; restarting from byte 0", url)
                offset = 0
            length = resp.headers.get("Content-Length")
            expected_total = int(length) if length and length.isdigit() else None
        if size is not None and expected_total is not None and expected_total != size:
            raise _Permanent(f"server offers {expected_total} bytes, expected {size}")

        received = 0
        with (
            open(part, "ab" if offset else "wb") as f,
            progress_bar(
                total=expected_total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=label,
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            try:
                # raw bytes: never let requests "helpfully" gunzip a .tgz served with
                # Content-Encoding: gzip, or the checksum would be of something else
                for chunk in resp.raw.stream(CHUNK, decode_content=False):
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (
                requests.RequestException,
                urllib3.exceptions.HTTPError,
                ConnectionError,
                TimeoutError,
            ) as e:
                raise _Transient(
                    f"transfer cut after {offset + received} bytes: {e}", received > 0
                ) from e
    got = offset + received
    if expected_total is not None and got < expected_total:
        raise _Transient(f"transfer cut at {got} of {expected_total} bytes", received > 0)


def _content_range(value: str) -> tuple[int, int | None]:
    m = re.match(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", value)
    if not m:
        raise _Transient(f"unparseable Content-Range {value!r}")
    total = None if m.group(3) == "*" else int(m.group(3))
    return int(m.group(1)), total


def _content_range_total(value: str) -> int | None:
    m = re.match(r"^\s*bytes\s+\*/(\d+)\s*$", value)
    return int(m.group(1)) if m else None


def _algos(md5: str | None, sha256: str | None, want_sha256: bool) -> tuple[str, ...]:
    algos = []
    if md5:
        algos.append("md5")
    if sha256 or want_sha256:
        algos.append("sha256")
    return tuple(algos)


def hash_file(path: Path, algos: Iterable[str] = ("sha256",)) -> Digests:
    """Size and the requested digests of ``path`` in one read."""
    hashers = {a: hashlib.new(a) for a in algos}
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            n += len(chunk)
            for h in hashers.values():
                h.update(chunk)
    return Digests(
        size=n,
        md5=hashers["md5"].hexdigest() if "md5" in hashers else None,
        sha256=hashers["sha256"].hexdigest() if "sha256" in hashers else None,
    )


def _mismatch(
    label: str,
    got: Digests,
    md5: str | None,
    sha256: str | None,
    size: int | None,
    sha256_note: str = "",
) -> str | None:
    """None if ``got`` verifies, else a sentence naming the file, expected and actual."""
    if size is not None and got.size != size:
        return f"size mismatch for {label}: expected {size} bytes, got {got.size}"
    if md5 and got.md5 != md5:
        return f"md5 mismatch for {label}: expected {md5}, got {got.md5}"
    if sha256 and got.sha256 != sha256:
        return f"sha256 mismatch for {label}: expected {sha256}{sha256_note}, got {got.sha256}"
    return None


# --------------------------------------------------------------------------------------
# Safe extraction
# --------------------------------------------------------------------------------------
def safe_extract(archive: Path, dest: Path) -> Path:
    """Unpack a tar (plain/gz/bz2/xz) or zip into ``dest`` atomically, refusing hostile members.

    Every member is checked before anything is written: absolute names, ``..`` escapes,
    symlinks/hardlinks resolving outside ``dest`` (following links inside the archive too)
    and device files raise DataError naming the member. The archive is extracted into a
    temporary sibling of ``dest`` which then replaces ``dest`` in one rename.
    """
    archive, dest = Path(archive), Path(dest)
    with _open_archive(archive) as arc:
        arc.check()
        with atomic_path(dest) as tmp:
            tmp.mkdir()
            arc.extract(tmp)
    return dest


class _Archive:
    def __init__(self, path: Path) -> None:
        self.path = path

    def check(self) -> None:
        raise NotImplementedError

    def extract(self, into: Path) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _Tar(_Archive):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            self.tf = tarfile.open(path, "r:*")
            self.members = self.tf.getmembers()
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DataError(f"{path}: not a readable tar archive: {e}") from e

    def check(self) -> None:
        links: dict[str, str] = {}
        for m in self.members:
            norm = _check_name(self.path, m.name)
            if m.ischr() or m.isblk() or m.isfifo():
                raise DataError(f"{self.path}: member {m.name!r} is a device or fifo; refused")
            if m.issym():
                if posixpath.isabs(m.linkname):
                    raise DataError(
                        f"{self.path}: member {m.name!r} is a symlink to the absolute path "
                        f"{m.linkname!r}; refused"
                    )
                links[norm] = m.linkname
        for m in self.members:
            # the raw name, not its normalised form: in "d/../x" the OS follows d if d is a link
            parent = posixpath.dirname(m.name.rstrip("/"))
            _resolve_inside(self.path, m.name, parent, links)
            if m.issym():
                _resolve_inside(self.path, m.name, posixpath.join(parent, m.linkname), links)
            elif m.islnk():
                if posixpath.isabs(m.linkname):
                    raise DataError(
                        f"{self.path}: member {m.name!r} is a hard link to the absolute path "
                        f"{m.linkname!r}; refused"
                    )
                _resolve_inside(self.path, m.name, m.linkname, links)

    def extract(self, into: Path) -> None:
        try:
            self.tf.extractall(into, members=self.members, filter="data")
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DataError(f"{self.path}: extraction failed: {e}") from e

    def close(self) -> None:
        self.tf.close()


class _Zip(_Archive):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            self.zf = zipfile.ZipFile(path)
            self.infos = self.zf.infolist()
        except (zipfile.BadZipFile, OSError) as e:
            raise DataError(f"{path}: not a readable zip archive: {e}") from e

    def check(self) -> None:
        for info in self.infos:
            _check_name(self.path, info.filename)
            if "\\" in info.filename and ".." in info.filename.split("\\"):
                raise DataError(f"{self.path}: member {info.filename!r} escapes; refused")

    def extract(self, into: Path) -> None:
        try:
            # zipfile never creates symlinks or device files: names are all that matter
            self.zf.extractall(into)
        except (zipfile.BadZipFile, OSError) as e:
            raise DataError(f"{self.path}: extraction failed: {e}") from e

    def close(self) -> None:
        self.zf.close()


@contextlib.contextmanager
def _open_archive(path: Path) -> Iterator[_Archive]:
    if not path.is_file():
        raise DataError(f"archive not found: {path}")
    if zipfile.is_zipfile(path):
        arc: _Archive = _Zip(path)
    elif tarfile.is_tarfile(path):
        arc = _Tar(path)
    else:
        raise DataError(f"{path}: neither a tar nor a zip archive")
    try:
        yield arc
    finally:
        arc.close()


def _check_name(archive: Path, name: str) -> str:
    """Normalised member name, or DataError if it is absolute or climbs out with ``..``."""
    if not name or "\x00" in name:
        raise DataError(f"{archive}: member {name!r} has an invalid name; refused")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise DataError(f"{archive}: member {name!r} has an absolute path; refused")
    norm = posixpath.normpath(name)
    if norm == ".." or norm.startswith("../"):
        raise DataError(f"{archive}: member {name!r} escapes the extraction directory; refused")
    return norm


def _resolve_inside(archive: Path, member: str, path: str, links: Mapping[str, str]) -> str:
    """Resolve ``path`` like the OS would, following the archive's own symlinks.

    Raises DataError (naming ``member``) if resolution ever climbs above the extraction
    root: a plain textual check misses ``a -> b/../..`` when ``b`` is itself a link.
    """
    todo = [p for p in path.split("/") if p not in ("", ".")]
    out: list[str] = []
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if not out:
                raise DataError(
                    f"{archive}: member {member!r} resolves outside the extraction directory "
                    f"(via {path!r}); refused"
                )
            out.pop()
            continue
        out.append(part)
        target = links.get("/".join(out))
        if target is not None:
            hops += 1
            if hops > 64:
                raise DataError(f"{archive}: member {member!r}: symlink loop; refused")
            if posixpath.isabs(target):
                raise DataError(
                    f"{archive}: member {member!r} goes through a symlink to the absolute "
                    f"path {target!r}; refused"
                )
            out.pop()
            todo = [p for p in target.split("/") if p not in ("", ".")] + todo
    return "/".join(out)


# --------------------------------------------------------------------------------------
# Pins for files without a published checksum
# --------------------------------------------------------------------------------------
class _Pins:
    """``<root>/.densepipe-pins.json``: sha256 of unpublished-checksum files, first seen."""

    def __init__(self, root: Path) -> None:
        self.path = root / PINS_NAME

    def _read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (json.JSONDecodeError, OSError) as e:
            raise DataError(f"{self.path}: unreadable pins file: {e}") from e
        if not isinstance(data, dict):
            raise DataError(f"{self.path}: expected a JSON object")
        return data

    def get(self, key: str) -> str | None:
        entry = self._read().get(key)
        return entry.get("sha256") if isinstance(entry, dict) else None

    def record(self, key: str, digests: Digests, origin: str) -> None:
        with _locked(self.path.with_name(PINS_NAME + ".lock")):
            data = self._read()
            data[key] = {
                "sha256": digests.sha256,
                "size": digests.size,
                "origin": origin,
                "pinned_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            write_text_atomic(self.path, json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Exclusive advisory lock, so parallel stages never download one file twice at once."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        if fcntl is not None:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------
# fetch
# --------------------------------------------------------------------------------------
@dataclass
class _Got:
    spec: FileSpec
    path: Path
    digests: Digests
    downloaded: bool
    origin: str = ""
    pin_key: str | None = None  # set when the file has no published checksum and no pin yet


def fetch(
    name: str,
    root: Path,
    *,
    from_dir: Path | None = None,
    manifest: Mapping[str, Source | Mapping[str, Any]] | str | os.PathLike | None = None,
    progress: bool = True,
    force: bool = False,
    keep_archives: bool = False,
    retries: int = 4,
    backoff: float = 1.0,
    timeout: float = 60,
) -> Path:
    """Make ``<root>/<name>/`` hold the verified, extracted dataset; return that folder.

    ``from_dir`` takes the files from a folder (``DIR/<filename>`` or
    ``DIR/<name>/<filename>``) instead of the network, still verifying them. ``manifest`` is
    a dict of ``Source`` (or YAML-shaped dicts), a manifest path, or None for the packaged
    ``sources.yaml``. A completed fetch is recorded and skipped next time unless ``force``.
    Use ``dataset_dir`` for the dataset's own root inside the returned folder.
    """
    sources = _resolve_manifest(manifest)
    src = sources[name]
    root = Path(root).expanduser().absolute()
    target = root / src.name
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{src.name}.lock"):
        if not force and _is_complete(target, src):
            log.info("%s already fetched in %s", src.name, target)
            return target
        if not force and target.exists() and not (target / MARKER_NAME).exists():
            # not ours (a manual extraction, perhaps with SegmentationClassAug added to it):
            # never replace it silently
            raise DataError(
                f"{target} exists but was not created by fetch; move it away, or pass "
                f"force=True to replace it with a fresh, verified copy"
            )
        pins = _Pins(root)
        got = [
            _obtain(
                src,
                spec,
                root,
                pins,
                from_dir=Path(from_dir) if from_dir is not None else None,
                progress=progress,
                retries=retries,
                backoff=backoff,
                timeout=timeout,
            )
            for spec in src.files
        ]
        with atomic_path(target) as tmp:
            tmp.mkdir()
            archives = [g for g in got if g.spec.archive != "none"]
            opened = [_open_archive(g.path) for g in archives]
            with contextlib.ExitStack() as stack:
                arcs = [stack.enter_context(cm) for cm in opened]
                for arc in arcs:  # check every archive before writing anything
                    arc.check()
                for arc in arcs:
                    arc.extract(tmp)
            for g in got:
                if g.spec.archive == "none":
                    _link_or_copy(g.path, tmp / g.spec.filename)
            _find_root(tmp, src, label=str(target))
            marker = {
                "source": src.name,
                "files": [_marker_entry(g) for g in got],
                "fetched_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n")
        # pin only what turned out to be the dataset: an HTML error page served with
        # "200 OK" must not become the reference every later download is held to
        for g in got:
            if g.pin_key is not None:
                pins.record(g.pin_key, g.digests, g.origin)
                log.info("pinned %s: sha256 %s", g.pin_key, g.digests.sha256)
        if not keep_archives:
            for g in got:
                if g.downloaded:
                    g.path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                (root / DOWNLOADS_DIR / src.name).rmdir()
    log.info("fetched %s into %s", src.name, target)
    return target


def dataset_dir(
    name: str,
    root: Path,
    *,
    manifest: Mapping[str, Source | Mapping[str, Any]] | str | os.PathLike | None = None,
) -> Path:
    """The dataset's own root (e.g. ``<root>/voc2012/VOCdevkit/VOC2012``) after ``fetch``."""
    src = _resolve_manifest(manifest)[name]
    return _find_root(Path(root) / src.name, src, label=str(Path(root) / src.name))


def _find_root(base: Path, src: Source, *, label: str) -> Path:
    """First of extracts_to / alternatives under ``base`` that holds the whole layout."""
    tried = []
    for rel in (src.extracts_to, *src.alternatives):
        candidate = base / rel
        missing = [p for p in src.layout if not (candidate / p).exists()]
        if candidate.is_dir() and not missing:
            return candidate
        tried.append(f"{rel}/ (missing: {', '.join(missing) or 'the folder itself'})")
    raise DataError(
        f"{src.name}: the extracted files in {label} do not have the expected layout; "
        f"looked for {'; '.join(tried)}"
    )


def _obtain(
    src: Source,
    spec: FileSpec,
    root: Path,
    pins: _Pins,
    *,
    from_dir: Path | None,
    progress: bool,
    retries: int,
    backoff: float,
    timeout: float,
) -> _Got:
    key = None if spec.published else f"{src.name}/{spec.filename}"
    pinned = None if key is None else pins.get(key)
    sha256 = spec.sha256 or pinned
    note = f" (pinned in {pins.path} on first download)" if pinned and not spec.sha256 else ""
    if from_dir is not None:
        path = _find_local(src, spec, from_dir)
        digests = hash_file(path, _algos(spec.md5, sha256, want_sha256=True))
        problem = _mismatch(str(path), digests, spec.md5, sha256, spec.size, note)
        if problem is not None:
            raise DataError(problem)
        origin, downloaded = str(path), False
    else:
        dest = root / DOWNLOADS_DIR / src.name / spec.filename
        path, digests, origin = _download(
            list(spec.urls),
            dest,
            md5=spec.md5,
            sha256=sha256,
            size=spec.size,
            retries=retries,
            backoff=backoff,
            progress=progress,
            timeout=timeout,
            want_sha256=True,
            sha256_note=note,
        )
        downloaded = True
    return _Got(spec, path, digests, downloaded, origin, pin_key=None if pinned else key)


def _find_local(src: Source, spec: FileSpec, from_dir: Path) -> Path:
    candidates = [from_dir / spec.filename, from_dir / src.name / spec.filename]
    for c in candidates:
        if c.is_file():
            return c
    raise DataError(
        f"{src.name}: {spec.filename} not found in {from_dir} (looked for "
        f"{', '.join(str(c) for c in candidates)}); it can be downloaded from {spec.urls[0]}"
    )


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # no copy of a multi-GB file when both are on one filesystem
    except OSError:
        shutil.copy2(src, dst)


def _marker_entry(g: _Got) -> dict[str, Any]:
    return {
        "filename": g.spec.filename,
        "md5": g.spec.md5,
        "sha256": g.digests.sha256,
        "size": g.digests.size,
        "origin": g.origin,
    }


def _is_complete(target: Path, src: Source) -> bool:
    """True if ``target`` holds a finished fetch of exactly the files the manifest lists."""
    marker = target / MARKER_NAME
    if not marker.is_file():
        return False
    try:
        data = json.loads(marker.read_text())
        entries = {e["filename"]: e for e in data["files"]}
    except (json.JSONDecodeError, KeyError, TypeError, OSError):
        return False
    if set(entries) != {f.filename for f in src.files}:
        return False
    for spec in src.files:
        e = entries[spec.filename]
        if spec.md5 and e.get("md5") != spec.md5:
            return False
        if spec.sha256 and e.get("sha256") != spec.sha256:
            return False
    return True
