"""Writers and fault-tolerant readers of WebDataset shards (interleaved documents and image-text pairs).

Writers produce byte-identical tars for the same input: fixed member order (the JSON first, then the images
by index), fixed mtimes, owners and modes; each shard is written to a temporary file in the output folder and
renamed when complete, so a reader never sees half a shard.

Readers never stop on bad input. A corrupt image, bad JSON, a schema error, a missing member, a truncated or
unreadable file: the sample (or the rest of the file) is skipped, counted per reason in :class:`ReadStats`, and
each file with problems gives ONE warning on the ``flamingo.data`` logger. Samples are checked by
:func:`flamingo.data.usable.check_sample`, as in the trainer's loader and ``flamingo data validate``; the reasons
are those of :data:`flamingo.data.usable.REASONS`.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import tarfile
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from flamingo.data.mmc4 import check_mmc4_dict, document_from_mmc4, is_mmc4_dict, sniff_image_ext
from flamingo.data.paths import PathSpec, expand_paths
from flamingo.data.remote import RetryPolicy, TransientReadError, is_url, local_path, open_stream
from flamingo.data.schema import (
    IMAGE_EXTENSIONS,
    EncodedImage,
    ImageInfo,
    ImageTextPair,
    InterleavedDocument,
    SchemaError,
    SchemaIssue,
    check_document_dict,
    is_valid_key,
)

if TYPE_CHECKING:  # flamingo.data.usable imports this module (through sft): imported where used
    from flamingo.data.usable import Checked, SampleSettings

logger = logging.getLogger("flamingo.data")


# ----------------------------------------------------------------------------------------------- stats


@dataclass
class ReadStats:
    """What a reader did: files opened, samples yielded, samples skipped and images dropped, per reason."""

    files: int = 0
    samples: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    """Samples (or whole files: ``missing_file``, ``unreadable_file``, ``truncated_tar``) skipped, per reason."""
    images_dropped: Counter[str] = field(default_factory=Counter)
    """Images removed from kept documents (``drop_bad_images=True``), per reason."""

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "samples": self.samples,
            "skipped": dict(self.skipped),
            "images_dropped": dict(self.images_dropped),
        }


class FileReadLog:
    """Counts one file's problems into a :class:`ReadStats` and logs them as one warning when finished."""

    def __init__(self, path: Path | str, stats: ReadStats):
        self.path = str(path)
        self.stats = stats
        self.reasons: Counter[str] = Counter()
        self.first_detail = ""
        stats.files += 1

    def skip(self, reason: str, detail: str = "") -> None:
        self.stats.skipped[reason] += 1
        self._note(reason, detail)

    def drop_image(self, reason: str, detail: str = "") -> None:
        self.stats.images_dropped[reason] += 1
        self._note(f"image_{reason}", detail)

    def _note(self, reason: str, detail: str) -> None:
        self.reasons[reason] += 1
        if detail and not self.first_detail:
            self.first_detail = detail

    def finish(self) -> None:
        if self.reasons:
            counts = ", ".join(f"{reason}={count}" for reason, count in sorted(self.reasons.items()))
            logger.warning("%s: skipped bad input (%s); first: %s", self.path, counts, self.first_detail)


# ----------------------------------------------------------------------------------------------- writing


class _TarShardWriter:
    """Rolls samples over tar shards ``{prefix}-{index:06d}.tar``, each written atomically."""

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        prefix: str = "shard",
        max_samples_per_shard: int = 1000,
        start_index: int = 0,
        mtime: int = 0,
    ):
        if max_samples_per_shard < 1:
            raise ValueError(f"max_samples_per_shard must be at least 1, got {max_samples_per_shard}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.max_samples_per_shard = max_samples_per_shard
        self.mtime = mtime
        self.shard_paths: list[Path] = []
        self.num_samples = 0
        self._next_index = start_index
        self._tar: tarfile.TarFile | None = None
        self._tmp_path: Path | None = None
        self._keys: set[str] = set()

    def _open_shard(self) -> tarfile.TarFile:
        name = f"{self.prefix}-{self._next_index:06d}.tar"
        self._tmp_path = self.out_dir / f".{name}.tmp{os.getpid()}"
        # The tar stays open across write() calls; close() or abort() ends it.
        self._tar = tarfile.open(self._tmp_path, "w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self._keys = set()
        return self._tar

    def _add_sample(self, key: str, members: list[tuple[str, bytes]]) -> None:
        tar = self._tar or self._open_shard()
        if key in self._keys:
            raise ValueError(f"key {key!r} is written twice to one shard; give each sample a unique key")
        self._keys.add(key)
        for name, data in members:
            info = tarfile.TarInfo(f"{key}.{name}")
            info.size, info.mtime, info.mode = len(data), self.mtime, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
        self.num_samples += 1
        if len(self._keys) >= self.max_samples_per_shard:
            self._finish_shard()

    def _finish_shard(self) -> None:
        if self._tar is None or self._tmp_path is None:
            return
        self._tar.close()
        final = self.out_dir / f"{self.prefix}-{self._next_index:06d}.tar"
        os.replace(self._tmp_path, final)
        self.shard_paths.append(final)
        self._tar, self._tmp_path = None, None
        self._next_index += 1

    def close(self) -> None:
        """Finish the open shard; the written shards are in ``shard_paths``."""
        self._finish_shard()

    def abort(self) -> None:
        """Discard the shard being written (finished shards stay)."""
        if self._tar is not None and self._tmp_path is not None:
            self._tar.close()
            self._tmp_path.unlink(missing_ok=True)
        self._tar, self._tmp_path = None, None

    def __enter__(self) -> _TarShardWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class InterleavedShardWriter(_TarShardWriter):
    """Writes :class:`InterleavedDocument` objects (with their ``images``) to interleaved shards.

    Example::

        with InterleavedShardWriter("out/", prefix="mmc4", max_samples_per_shard=1000) as writer:
            for document in documents:
                writer.write(document)
        print(writer.shard_paths)
    """

    def write(self, document: InterleavedDocument, key: str | None = None) -> str:
        """Write one document under ``key`` (default: its id); fills missing sha256/width/height."""
        key = key if key is not None else document.id
        shard = f"{self.prefix}-{self._next_index:06d}.tar"
        if not is_valid_key(key):
            raise ValueError(
                f"{shard}: key {key!r} (document id {document.id!r}) is not a WebDataset key; "
                "use letters, digits, '_' and '-' only, or pass key=..."
            )
        if len(document.images) != len(document.image_info):
            raise ValueError(
                f"{shard} [{key}]: {len(document.image_info)} image_info entries but {len(document.images)} "
                "images; attach one EncodedImage per image_info entry to document.images"
            )
        infos = [
            _complete_image_info(info, image, shard, key)
            for info, image in zip(document.image_info, document.images)
        ]
        data = replace(document, image_info=infos).to_dict()
        issues = check_document_dict(data)
        if issues:
            raise SchemaError(issues[0], shard, key)
        members = [("json", _json_bytes(data))]
        members += [(info.member, image.data) for info, image in zip(infos, document.images)]
        self._add_sample(key, members)
        return key


def _complete_image_info(info: ImageInfo, image: EncodedImage, shard: str, key: str) -> ImageInfo:
    if not image.data:
        raise ValueError(
            f"{shard} [{key}]: image {info.member} has no encoded bytes; "
            "encode it first (flamingo.data.synthetic.encode_image)"
        )
    digest = image.sha256()
    if info.sha256 and info.sha256 != digest:
        raise ValueError(
            f"{shard} [{key}]: image {info.member} has sha256 {digest} but image_info says {info.sha256}; "
            "clear the stored hash or attach the right bytes"
        )
    width, height = info.width, info.height
    if not width or not height:
        width, height = image.decode().size
    return replace(info, sha256=digest, width=width, height=height)


class PairShardWriter(_TarShardWriter):
    """Writes :class:`ImageTextPair` objects in the img2dataset layout (``.jpg``, ``.txt``, ``.json``)."""

    def write(self, pair: ImageTextPair, key: str | None = None) -> str:
        """Write one pair under ``key`` (default: ``pair.key``); fills width/height when unknown."""
        key = key if key is not None else pair.key
        if not is_valid_key(key):
            raise ValueError(f"pair key {key!r} is not a WebDataset key; use letters, digits, '_' and '-'")
        if pair.image.ext not in IMAGE_EXTENSIONS:
            raise ValueError(f"[{key}]: image extension {pair.image.ext!r} is not one of {IMAGE_EXTENSIONS}")
        if not pair.width or not pair.height:
            width, height = pair.image.decode().size
            pair = replace(pair, width=width, height=height)
        members = [
            (pair.image.ext, pair.image.data),
            ("json", _json_bytes(pair.to_json_dict())),
            ("txt", pair.caption.encode("utf-8")),
        ]
        self._add_sample(key, sorted(members))
        return key


# ----------------------------------------------------------------------------------------------- reading


def split_member_name(name: str) -> tuple[str, str]:
    """WebDataset's key convention: ``dir/doc7.0.jpg`` -> (``dir/doc7``, ``0.jpg``)."""
    folder, _, base = name.rpartition("/")
    stem, _, suffix = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), suffix


def iter_tar_samples(
    path: Path | str, log: FileReadLog, retry: RetryPolicy | None = None
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {suffix: bytes}) for each group of consecutive members with one key; errors go to ``log``.

    A file that cannot be opened counts as ``missing_file`` or ``unreadable_file``. A read error part-way (a
    truncated tar) counts once as ``truncated_tar``; the members read before it are still yielded, so the
    sample being read shows up without its lost members and its parser counts it. (A tar cut exactly at a
    member boundary cannot be told from a complete one: tar has no index.)

    A URL (``s3://``, ``gs://``, ``http(s)://``, ``pipe:``) is read as a stream; a transfer that fails is
    retried as ``retry`` says (default :class:`~flamingo.data.remote.RetryPolicy`) and resumes after the last
    sample yielded, so no sample comes twice or goes missing. A shard that keeps failing counts once as
    ``read_failed`` after the samples read before the failure.
    """
    if is_url(path):
        yield from _RemoteTar(str(path), log, retry or RetryPolicy()).samples()
        return
    path = Path(path)
    if not path.is_file():
        log.skip("missing_file", f"{path} does not exist")
        return
    try:
        tar = tarfile.open(path, "r|*")  # noqa: SIM115 - closed by the with block below
    except (tarfile.TarError, OSError, EOFError) as error:
        log.skip("unreadable_file", f"{path}: {error}")
        return
    key, members = None, {}
    with tar:
        try:
            for member in tar:
                if not member.isfile():
                    continue
                name_key, suffix = split_member_name(member.name)
                if name_key != key:
                    if key is not None:
                        yield key, members
                    key, members = name_key, {}
                handle = tar.extractfile(member)
                data = handle.read() if handle is not None else b""
                members.setdefault(suffix, data)
        except (tarfile.TarError, OSError, EOFError) as error:
            log.skip("truncated_tar", f"{path}: {error}")
    if key is not None:
        yield key, members


class _RemoteTar:
    """The samples of one remote tar shard, read as a stream and resumed after transient failures.

    Samples are counted as they are yielded; a reopened stream passes over that many samples (their members'
    bytes are read past, not kept) and continues with the next one. The sample being read when the transfer
    failed is dropped and read again whole.
    """

    def __init__(self, url: str, log: FileReadLog, retry: RetryPolicy):
        self.url, self.log, self.retry = url, log, retry
        self.done = 0
        """Samples yielded so far."""
        self.key: str | None = None
        self.members: dict[str, bytes] = {}
        self.index = -1
        """Index in the shard of the sample being read (-1 before the first member)."""

    def samples(self) -> Iterator[tuple[str, dict[str, bytes]]]:
        failures, progress_at_failure = 0, -1
        while True:
            self.key, self.members, self.index = None, {}, -1
            try:
                yield from self._read_once()
                return
            except TransientReadError as error:
                if self.done > progress_at_failure:  # samples came since the last failure: a fresh budget
                    failures = 0
                progress_at_failure = self.done
                if failures >= self.retry.retries:
                    tries = failures + 1
                    self.log.skip(
                        "read_failed", f"{error} (gave up after {tries} tries, {self.done} samples read)"
                    )
                    return
                delay = self.retry.delay(failures)
                failures += 1
                logger.info(
                    "%s: retry %d in %.1fs after %d samples: %s", self.url, failures, delay, self.done, error
                )
                time.sleep(delay)
            except FileNotFoundError as error:
                self.log.skip("missing_file", f"{self.url} does not exist ({error})")
                return
            except (tarfile.TarError, OSError, EOFError) as error:
                if self.index < 0:  # nothing of the tar could be read: not a tar, or access refused
                    self.log.skip("unreadable_file", f"{self.url}: {error}")
                    return
                self.log.skip("truncated_tar", f"{self.url}: {error}")
                # As for a local file: the sample cut short is handed on, for its parser to count.
                if self.key is not None and self.index >= self.done:
                    self.done += 1
                    yield self.key, self.members
                return

    def _read_once(self) -> Iterator[tuple[str, dict[str, bytes]]]:
        with open_stream(self.url) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name_key, suffix = split_member_name(member.name)
                if name_key != self.key:
                    if self.key is not None and self.index >= self.done:
                        self.done += 1
                        yield self.key, self.members
                    self.key, self.members, self.index = name_key, {}, self.index + 1
                if self.index >= self.done:  # samples yielded before a reopening are passed over unread
                    handle = tar.extractfile(member)
                    self.members.setdefault(suffix, handle.read() if handle is not None else b"")
        if self.key is not None and self.index >= self.done:
            self.done += 1
            yield self.key, self.members


def count_checked(checked: Checked, log: FileReadLog, source: str = "") -> None:
    """Count what :func:`flamingo.data.usable.check_sample` found: the skip reason, or the dropped images."""
    if checked.skipped is not None:
        log.skip(checked.skipped.reason, checked.skipped.describe(source, checked.key))
    for problem in checked.dropped:
        log.drop_image(problem.reason, problem.describe(source, checked.key))


def _read_sample(
    key: str, members: dict[str, bytes], path: Path | str, log: FileReadLog, settings: SampleSettings
) -> Any:
    """The parsed sample, or None when it is unusable (counted in ``log``)."""
    from flamingo.data.usable import check_sample

    checked = check_sample(key, members, settings, source=str(path))
    count_checked(checked, log, str(path))
    return checked.sample if checked.skipped is None else None


def read_interleaved(
    paths: PathSpec,
    *,
    stats: ReadStats | None = None,
    verify_images: bool = True,
    drop_bad_images: bool = False,
    retry: RetryPolicy | None = None,
) -> Iterator[InterleavedDocument]:
    """Documents from interleaved tar shards: ours, or OpenFlamingo's MMC4 shards (``image_base64``).

    Args:
        paths: files, globs, brace patterns (``shard-{000000..000009}.tar``) or folders, local or URLs
            (``s3://``, ``gs://``, ``https://``, ``pipe:COMMAND``).
        stats: counts of what was read and skipped (per reason); pass one to inspect it afterwards.
        verify_images: decode every image (cached on the document) so corrupt ones are caught here;
            with False, images are decoded lazily by ``EncodedImage.decode``.
        drop_bad_images: keep a document without its missing or corrupt images instead of skipping it.
        retry: how remote shards are retried after a transient failure (default: 3 retries from 1 s).
    """
    from flamingo.data.usable import SampleSettings

    settings = SampleSettings(
        kind="interleaved", verify_images=verify_images, drop_bad_images=drop_bad_images
    )
    stats = stats if stats is not None else ReadStats()
    for path in expand_paths(paths):
        log = FileReadLog(path, stats)
        for key, members in iter_tar_samples(path, log, retry):
            document = _read_sample(key, members, path, log, settings)
            if document is not None:
                stats.samples += 1
                yield document
        log.finish()


def _open_text_lines(path: Path) -> Iterator[str]:
    """Lines of a ``.jsonl``, ``.jsonl.gz`` or ``.zip`` (first member) file, decoded as UTF-8."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as archive, archive.open(archive.namelist()[0]) as handle:
            yield from io.TextIOWrapper(handle, encoding="utf-8", errors="replace")
    elif path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as handle:
            yield from handle
    else:
        with open(path, encoding="utf-8", errors="replace") as handle:
            yield from handle


def _mmc4_line_document(
    line: str, doc_id: str, image_dir: Path, log: FileReadLog, verify: bool, drop_bad: bool
) -> InterleavedDocument | None:
    from flamingo.data.usable import Checked, SampleSettings, check_document_images

    try:
        data = json.loads(line)
    except (ValueError, RecursionError) as error:  # bad JSON, a number of 4300+ digits, deep nesting
        log.skip("bad_json", f"{doc_id}: {error}")
        return None
    if not isinstance(data, dict):
        log.skip("not_an_object", f"{doc_id}: expected a JSON object, got {type(data).__name__}")
        return None
    if not is_mmc4_dict(data):
        log.skip("schema_error", f"{doc_id}: not an MMC4 document (needs text_list and image_info)")
        return None
    issues = check_mmc4_dict(data)
    if issues:
        log.skip(issues[0].reason, issues[0].describe(doc_id))
        return None
    images, missing = [], {}
    for index, info in enumerate(data["image_info"]):
        name = info.get("image_name")
        file = image_dir / name if isinstance(name, str) and name else None
        if file is None or not _is_file(file):
            fix = f"put the image in {image_dir}, or remove its image_info entry"
            message = f"{name!r} is not in the image folder"
            missing[index] = SchemaIssue(f"image_info[{index}].image_name", message, fix, "missing_member")
        images.append(
            EncodedImage(b"" if index in missing else file.read_bytes(), sniff_image_ext(b"", name))
        )
    document = document_from_mmc4(data, doc_id, images)
    settings = SampleSettings(kind="interleaved", verify_images=verify, drop_bad_images=drop_bad)
    checked = check_document_images(Checked(doc_id, "interleaved"), document, missing, settings)
    count_checked(checked, log, doc_id)
    return checked.sample if checked.skipped is None else None


def _is_file(path: Path) -> bool:
    """Whether ``path`` is a file; False for a name the file system refuses (too long, ...)."""
    try:
        return path.is_file()
    except OSError:
        return False


def read_mmc4_jsonl(
    paths: PathSpec,
    image_dir: str | os.PathLike[str],
    *,
    stats: ReadStats | None = None,
    verify_images: bool = True,
    drop_bad_images: bool = False,
) -> Iterator[InterleavedDocument]:
    """Documents from MMC4 JSONL files (one document per line) with images in ``image_dir``.

    Images are found by ``image_info[i]["image_name"]``; document ids are ``<file stem>-<line number>``.
    Missing images are common in MMC4 (link rot), so ``drop_bad_images=True`` is usually wanted here.
    """
    stats = stats if stats is not None else ReadStats()
    image_root = Path(image_dir)
    for location in expand_paths(paths, suffixes=(".jsonl", ".jsonl.gz", ".zip")):
        path = local_path(location)  # the images are looked up in a local folder: the JSONL is local too
        log = FileReadLog(path, stats)
        if not path.is_file():
            log.skip("missing_file", f"{path} does not exist")
            log.finish()
            continue
        stem = path.name.split(".", 1)[0]
        try:
            for number, line in enumerate(_open_text_lines(path)):
                if not line.strip():
                    continue
                document = _mmc4_line_document(
                    line, f"{stem}-{number:07d}", image_root, log, verify_images, drop_bad_images
                )
                if document is not None:
                    stats.samples += 1
                    yield document
        except (OSError, EOFError, zipfile.BadZipFile) as error:
            log.skip("unreadable_file", f"{path}: {error}")
        log.finish()


def read_pairs(
    paths: PathSpec,
    *,
    stats: ReadStats | None = None,
    verify_images: bool = True,
    retry: RetryPolicy | None = None,
) -> Iterator[ImageTextPair]:
    """Image-text pairs from img2dataset tar shards (``<key>.jpg|png|jpeg|webp``, ``.txt``, ``.json``).

    The caption comes from ``.txt``, else from the JSON's ``caption``. ``paths`` and ``retry`` are as for
    :func:`read_interleaved`.
    """
    from flamingo.data.usable import SampleSettings

    settings = SampleSettings(kind="pairs", verify_images=verify_images)
    stats = stats if stats is not None else ReadStats()
    for path in expand_paths(paths):
        log = FileReadLog(path, stats)
        for key, members in iter_tar_samples(path, log, retry):
            pair = _read_sample(key, members, path, log, settings)
            if pair is not None:
                stats.samples += 1
                yield pair
        log.finish()
