"""`seriesflow send` and `seriesflow echo`: a real DICOM sender (C-STORE / C-ECHO SCU).

`send` walks the given paths, reads just enough of each file to know its SOP class and
transfer syntax, and sends the files unchanged (pynetdicom's chunked mode streams the
file's bytes; nothing is decoded or re-encoded) over N parallel associations. Files that
are not DICOM are reported and skipped; a failed file never stops the others.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.status import code_to_category

from seriesflow import settings
from seriesflow.settings import setting

_log = logging.getLogger(__name__)

# DICOM allows at most 128 presentation contexts in one association request.
MAX_CONTEXTS = 128
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"


@dataclass(frozen=True)
class SenderConfig:
    """Where and how `send` and `echo` reach a Storage SCP."""

    host: str = setting("localhost", settings.non_empty_text, "host of the receiver")
    dicom_port: int = setting(
        "6667", settings.port, "DICOM port of the receiver", aliases=("--port",)
    )
    ae_title: str = setting(
        "STORESCP", settings.ae_title, "AE title to call", aliases=("--called-ae",)
    )
    calling_ae_title: str = setting(
        "SERIESFLOW", settings.ae_title, "our own AE title", aliases=("--calling-ae",)
    )
    jobs: int = setting("1", settings.positive_int, "parallel associations for send")
    dimse_timeout: float = setting(
        "30", settings.positive_seconds, "seconds to wait for each response"
    )


@dataclass(frozen=True)
class DicomFile:
    path: Path
    sop_class_uid: str
    transfer_syntax_uid: str
    # A bare dataset without the Part 10 header (preamble, DICM, file meta), as older
    # archives and some modalities write them; dcmtk's storescu sends these too. Also a
    # file whose meta names another SOPInstanceUID than its dataset: both are sent decoded.
    bare: bool = False


@dataclass
class SendReport:
    """What happened to every file; merged across jobs under a lock."""

    statuses: Counter[str] = dataclasses.field(default_factory=Counter)
    failures: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    sent: int = 0
    failed: int = 0
    # (SOP class, transfer syntax) -> why the receiver refused that presentation context
    refused: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def record_refused(self, pair: tuple[str, str], why: str) -> None:
        with self.lock:
            self.refused[pair] = why

    def record(self, path: Path, category: str, detail: str) -> None:
        with self.lock:
            self.statuses[category] += 1
            if category in ("Success", "Warning"):
                self.sent += 1
            else:
                self.failed += 1
                self.failures.append(f"{path}: {detail}")


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Every regular file under the paths, recursively, in a stable order."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


# (implicit VR, little endian) as pydicom detects a bare dataset -> its transfer syntax
_BARE_SYNTAXES = {
    (True, True): ImplicitVRLittleEndian,
    (False, True): ExplicitVRLittleEndian,
    (False, False): ExplicitVRBigEndian,
}


def probe(path: Path) -> DicomFile | str:
    """The file's SOP class and transfer syntax, or why it cannot be sent."""
    try:
        with warnings.catch_warnings():
            # pydicom warns about odd files it still reads; the summary reports what matters
            warnings.simplefilter("ignore")
            ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
            meta = ds.file_meta
    except FileNotFoundError:
        return "no such file"
    except InvalidDicomError:
        return _probe_bare(path)
    except (OSError, ValueError, EOFError) as exc:
        return f"not a DICOM file ({exc.__class__.__name__})"
    sop_class = meta.get("MediaStorageSOPClassUID")
    syntax = meta.get("TransferSyntaxUID")
    if not sop_class or not syntax:
        return "no file meta information (MediaStorageSOPClassUID/TransferSyntaxUID)"
    if sop_class == MEDIA_STORAGE_DIRECTORY:
        return "a DICOMDIR, not an instance"
    # A file meta naming another instance than its dataset (pydicom's own rtdose.dcm): sent
    # from the dataset, as storescu and dcmsend do, so the C-STORE announces the UID the
    # receiver checks the data against (sending the file as it is would announce the meta's).
    dataset_uid = ds.get("SOPInstanceUID")
    stale = bool(dataset_uid) and dataset_uid != meta.get("MediaStorageSOPInstanceUID")
    return DicomFile(path, str(sop_class), str(syntax), bare=stale)


def _probe_bare(path: Path) -> DicomFile | str:
    """A file without the DICOM file header: a bare dataset if it names its instance."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(
                path,
                force=True,
                stop_before_pixels=True,
                specific_tags=["SOPClassUID", "SOPInstanceUID"],
            )
        sop_class, sop_instance = ds.get("SOPClassUID"), ds.get("SOPInstanceUID")
        syntax = _BARE_SYNTAXES.get(ds.original_encoding)  # type: ignore[arg-type]
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        return f"not a DICOM file ({exc.__class__.__name__})"
    if not sop_class or not sop_instance or syntax is None:
        return "not a DICOM file (no file header, no SOP UIDs)"
    return DicomFile(path, str(sop_class), str(syntax), bare=True)


def _batches(files: Sequence[DicomFile]) -> Iterator[list[DicomFile]]:
    """Consecutive runs of files whose (SOP class, syntax) pairs fit one association."""
    batch: list[DicomFile] = []
    pairs: set[tuple[str, str]] = set()
    for f in files:
        pair = (f.sop_class_uid, f.transfer_syntax_uid)
        if pair not in pairs and len(pairs) == MAX_CONTEXTS:
            yield batch
            batch, pairs = [], set()
        pairs.add(pair)
        batch.append(f)
    if batch:
        yield batch


def _send_batch(
    config: SenderConfig,
    batch: list[DicomFile],
    report: SendReport,
    advance: Callable[[int], object],
) -> None:
    ae = AE(ae_title=config.calling_ae_title)
    ae.dimse_timeout = config.dimse_timeout
    pairs = sorted({(f.sop_class_uid, f.transfer_syntax_uid) for f in batch})
    ae.requested_contexts = [build_context(sop, [ts]) for sop, ts in pairs]
    assoc = ae.associate(config.host, config.dicom_port, ae_title=config.ae_title)
    refused = _refused_pairs(assoc)
    for pair, why in refused.items():
        report.record_refused(pair, why)
    if not assoc.is_established and not refused:
        kind, detail = _no_association(assoc, config)
        for f in batch:
            report.record(f.path, "Failure", f"association {kind}: {detail}")
            advance(1)
        return
    try:
        for f in batch:
            pair = (f.sop_class_uid, f.transfer_syntax_uid)
            if pair in refused:
                report.record(f.path, "Failure", f"not sent: {_describe(pair)} {refused[pair]}")
            elif not assoc.is_established:
                report.record(f.path, "Failure", "association lost before sending")
            else:
                _send_one(assoc, f, report)
            advance(1)
    finally:
        if assoc.is_established:
            assoc.release()


# Presentation context results (PS3.8 9.3.3.2), as the receiver gave them
_CONTEXT_RESULTS = {
    1: "refused by the receiver (user rejection)",
    2: "refused by the receiver (no reason given)",
    3: "refused by the receiver: SOP class not supported (abstract syntax not supported)",
    4: "refused by the receiver: transfer syntax not supported",
}


def _refused_pairs(assoc: Any) -> dict[tuple[str, str], str]:
    """(SOP class, transfer syntax) -> why, for each proposed context the receiver refused.

    Also when it refused them all, which pynetdicom reports as an aborted association."""
    proposed = {cx.context_id: cx for cx in assoc.requestor.requested_contexts}
    out = {}
    for cx in assoc.rejected_contexts:
        ours = proposed.get(cx.context_id, cx)
        pair = (str(ours.abstract_syntax), str(ours.transfer_syntax[0]))
        out[pair] = _CONTEXT_RESULTS.get(cx.result, f"refused by the receiver (result {cx.result})")
    return out


def _describe(pair: tuple[str, str]) -> str:
    sop_class, syntax = UID(pair[0]), UID(pair[1])
    sop_name = f" ({sop_class.name})" if sop_class.name != sop_class else ""
    syntax_name = f" ({syntax.name})" if syntax.name != syntax else ""
    return f"SOP class {sop_class}{sop_name} in {syntax}{syntax_name}"


def _no_association(assoc: Any, config: SenderConfig) -> tuple[str, str]:
    """Why the association did not come up ("rejected" or "failed"), and what to check."""
    where = f"{config.host}:{config.dicom_port}"
    if assoc.is_rejected:
        return "rejected", (
            f"{where} rejected it; check the called AE title ({config.ae_title}) and that"
            f" the receiver accepts calling AE title {config.calling_ae_title}"
        )
    # pynetdicom reports a refused connection and an aborted negotiation alike
    return "failed", (
        f"nothing answered at {where} (refused, aborted or timed out);"
        " is the receiver running, and is that its DICOM port?"
    )


def _send_one(assoc: Any, f: DicomFile, report: SendReport) -> None:
    try:
        status = assoc.send_c_store(_bare_dataset(f) if f.bare else f.path)
    except (InvalidDicomError, ValueError, AttributeError, KeyError, OSError) as exc:
        report.record(f.path, "Failure", f"not sent: {exc}")
        return
    if "Status" not in status:
        report.record(f.path, "Failure", "no response (timeout or connection lost)")
        return
    code = int(status.Status)
    category = code_to_category(code)
    comment = status.get("ErrorComment", "")
    report.record(f.path, category, f"status 0x{code:04X} {category} {comment}".strip())


def _bare_dataset(f: DicomFile) -> Dataset:
    """A bare dataset with the file meta pynetdicom needs to send it in its own syntax
    (chunked sending reads that from a file header, which these files lack)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(f.path, force=True)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(f.transfer_syntax_uid)
    return ds


def send(config: SenderConfig, paths: Sequence[Path], *, out: TextIO = sys.stdout) -> int:
    """Send every DICOM file under `paths`; print a summary; 0 when nothing failed."""
    from tqdm import tqdm

    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        print(f"no such file or folder: {', '.join(missing)}; nothing was sent", file=out)
        return 2
    _quiet_pynetdicom()
    # Stream each file's bytes as they are on disk instead of decoding and re-encoding.
    _config.STORE_SEND_CHUNKED_DATASET = True
    report = SendReport()
    files: list[DicomFile] = []
    for path in iter_files(paths):
        probed = probe(path)
        if isinstance(probed, str):
            report.skipped.append(f"{path}: {probed}")
        else:
            files.append(probed)
    jobs = max(1, min(config.jobs, len(files)))
    # Contiguous shares keep each series on one association where possible.
    share = -(-len(files) // jobs) if files else 0
    batches = [batch for i in range(jobs) for batch in _batches(files[i * share : (i + 1) * share])]
    with (
        tqdm(total=len(files), unit="file", file=sys.stderr, disable=None) as bar,
        ThreadPoolExecutor(max_workers=jobs) as pool,
    ):
        for done in [pool.submit(_send_batch, config, b, report, bar.update) for b in batches]:
            done.result()
    _print_summary(report, len(files), out)
    if not files:
        print("nothing to send: no DICOM instances found under the given paths", file=out)
        return 1
    return 1 if report.failed else 0


def _quiet_pynetdicom() -> None:
    """pynetdicom logs every refused connection or rejected association at ERROR; the
    summary already says what failed, per file. Left as is when debugging."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)


def _print_summary(report: SendReport, total: int, out: TextIO) -> None:
    def say(line: str) -> None:
        print(line, file=out)

    statuses = ", ".join(f"{n} {cat.lower()}" for cat, n in sorted(report.statuses.items()))
    say(f"sent {report.sent} of {total} DICOM files ({statuses or 'none sent'})")

    def listing(lines: list[str]) -> None:
        for line in lines[:20]:
            say(f"  {line}")
        if len(lines) > 20:
            say(f"  ... and {len(lines) - 20} more")

    if report.refused:
        say(f"the receiver refused {len(report.refused)} of the SOP class / transfer syntax pairs:")
        listing([f"{_describe(pair)}: {why}" for pair, why in sorted(report.refused.items())])
    if report.skipped:
        say(f"skipped {len(report.skipped)} files that are not DICOM instances:")
        listing(report.skipped)
    if report.failures:
        say(f"{len(report.failures)} files failed:")
        listing(report.failures)


def echo(config: SenderConfig, *, out: TextIO = sys.stdout) -> int:
    """C-ECHO the receiver; 0 when it answers Success."""
    _quiet_pynetdicom()
    ae = AE(ae_title=config.calling_ae_title)
    ae.dimse_timeout = config.dimse_timeout
    ae.add_requested_context(Verification)
    target = f"{config.ae_title}@{config.host}:{config.dicom_port}"
    assoc = ae.associate(config.host, config.dicom_port, ae_title=config.ae_title)
    if not assoc.is_established:
        print(f"C-ECHO {target}: no association: {_no_association(assoc, config)[1]}", file=out)
        return 1
    try:
        status = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    code = int(status.Status) if "Status" in status else None
    if code == 0:
        print(f"C-ECHO {target}: success", file=out)
        return 0
    shown = "no response" if code is None else f"status 0x{code:04X}"
    print(f"C-ECHO {target}: {shown}", file=out)
    return 1


def add_send_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or folders")
    settings.add_flags(parser, SenderConfig)
