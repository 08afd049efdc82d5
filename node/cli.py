"""The ``cxr-node`` command: the one place that wires configuration, storage and the node."""

from __future__ import annotations

import argparse
import atexit
import gc
import logging
import os
import sys
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

from config.settings import ConfigError, Settings, load_settings
from model import BUNDLED_MODEL


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr-node", description=__doc__)
    parser.add_argument("--config", help="YAML configuration file (default: $CXR_NODE_CONFIG, "
                        "else built-in defaults); CXR_NODE_<SECTION>__<KEY> overrides any key")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("serve", help="run the node: listener, completion, worker, sender and "
                        "web service")
    commands.add_parser("worker", help="run an analysis worker and a sender only (scale-out: "
                        "more of these on hosts that share the database and storage); health "
                        "and metrics on web.worker_port")
    commands.add_parser("web", help="run the web service (health, metrics) alone, on the "
                        "node's database")

    demo = commands.add_parser("demo", help="the whole loop on this machine: node, a PACS, "
                               "generated studies and a real one, results and latency")
    demo.add_argument("--out", required=True, type=Path, help="folder for the demo's files")
    demo.add_argument("--viewer", action="store_true",
                      help="then keep the node up with its own viewer (OHIF at /viewer/ on "
                      "its web service) and a viewer account made for the run; print where "
                      "to open each study, until Ctrl-C")
    demo.add_argument("--ohif-dist", type=Path, default=None,
                      help="OHIF's prebuilt dist folder the node serves (default: the one "
                      "`make viewer-assets` fetches)")

    labels = commands.add_parser("labels", help="radiologist labels")
    label_actions = labels.add_subparsers(dest="action", required=True)
    label_import = label_actions.add_parser("import", help="import a labels file (all or "
                                            "nothing; bad rows are listed with line numbers)")
    label_import.add_argument("file", type=Path)
    label_import.add_argument("--format", required=True, choices=("nih", "vindr", "csv"))

    dataset = commands.add_parser("dataset", help="public data sets as training folders")
    dataset_actions = dataset.add_subparsers(dest="action", required=True)
    dataset_import = dataset_actions.add_parser(
        "import", help="write a training folder (images/, labels.csv) from a data set's files "
        "as published; all or nothing, bad rows listed with line numbers")
    dataset_import.add_argument("file", type=Path, help="the labels: BBox_List_2017.csv (nih), "
                                "Kaggle's train.csv or PhysioNet's annotations_train.csv or "
                                "annotations_test.csv (vindr), or our CSV (csv)")
    dataset_import.add_argument("--format", required=True, choices=("nih", "vindr", "csv"))
    dataset_import.add_argument("--images", required=True, type=Path,
                                help="folder with the image files (searched with subfolders)")
    dataset_import.add_argument("--data-entry", type=Path, metavar="FILE",
                                help="nih: Data_Entry_2017.csv (patients, views, normals)")
    dataset_import.add_argument("--out", required=True, type=Path,
                                help="the training folder to write (new or empty)")
    dataset_import.add_argument("--test-fraction", type=float, default=0.0,
                                help="patients held out, stratified by finding, into "
                                "OUT/test/labels.csv for cxr-node evaluate (default 0: none)")
    dataset_import.add_argument("--seed", type=int, default=0, help="of the test split")

    retrain = commands.add_parser("retrain", help="train a candidate on the site's labels and "
                                  "judge it against the active model on the locked test set")
    retrain.add_argument("--from-scratch", action="store_true",
                         help="do not start from the active model's weights")
    retrain.add_argument("--epochs", type=int, help="default: training.epochs")
    retrain.add_argument("--image-size", type=int, help="default: the active model's")
    retrain.add_argument("--device", default="auto")
    retrain.add_argument("--init-backbone", type=Path, metavar="FILE",
                         help="with --from-scratch: a timm ImageNet checkpoint of the backbone")
    retrain.add_argument("--nproc-per-node", type=int, metavar="N",
                         help="training processes on this host, one per GPU (torchrun, "
                         "DistributedDataParallel; default: training.nproc_per_node)")

    models = commands.add_parser("models", help="the model registry")
    model_actions = models.add_subparsers(dest="action", required=True)
    model_actions.add_parser("list", help="every version: state, figures, gate verdict")
    promote = model_actions.add_parser("promote", help="make a candidate that passed the "
                                       "promotion gate active")
    promote.add_argument("id", type=int)
    promote.add_argument("--override", metavar="REASON",
                         help="activate a candidate the gate refused; the reason is audited")
    model_actions.add_parser("rollback", help="make the previously active version active again")
    register = model_actions.add_parser("register", help="judge a model trained elsewhere "
                                        "(cxr-node train) on the locked test set; register it")
    register.add_argument("model_dir", type=Path)
    register.add_argument("--device", default="auto")

    scheduler = commands.add_parser("scheduler", help="run scheduled retraining, audit "
                                    "reports and retention (or list them: scheduler jobs)")
    scheduler.add_argument("action", nargs="?", choices=("jobs",),
                           help="jobs: the schedule and the last runs")

    report = commands.add_parser("report", help="reports for admins")
    report.add_argument("kind", choices=("audit",))
    report.add_argument("--since", type=_utc_time,
                        help="UTC date or time, e.g. 2026-11-01 or 2026-11-01T08:00 "
                        "(default: 24 hours before --until)")
    report.add_argument("--until", type=_utc_time, help="default: now")
    report.add_argument("--out", required=True, type=Path)

    backup = commands.add_parser("backup", help="the database and the data directory as "
                                 "one archive; safe while the node runs")
    backup.add_argument("--out", required=True, type=Path, metavar="FILE",
                        help="the archive to write: a new file outside storage.data_dir")
    restore = commands.add_parser("restore", help="a backup into an empty database and an "
                                  "empty data directory, then migrated to this version")
    restore.add_argument("file", type=Path, metavar="FILE")

    transfers = commands.add_parser("transfers", help="result transfers: pending, dead letters")
    transfers.add_argument("--all", action="store_true", help="include sent transfers")
    transfers.add_argument("--limit", type=int, default=50)
    transfer_actions = transfers.add_subparsers(dest="action")
    retry = transfer_actions.add_parser("retry", help="queue dead letters again")
    retry.add_argument("ids", nargs="*", type=int, help="transfer ids (default: every dead one)")

    users = commands.add_parser("users", help="console accounts (roles: viewer, operator, "
                                "admin)")
    user_actions = users.add_subparsers(dest="action", required=True)
    user_add = user_actions.add_parser("add", help="add an account (password prompted twice)")
    user_add.add_argument("name")
    # Checked in storage.accounts, not by argparse: a bad role is one line, as a bad name.
    user_add.add_argument("--role", required=True, metavar="viewer|operator|admin")
    user_passwd = user_actions.add_parser("passwd", help="set an account's password (ends its "
                                          "sessions, lifts a lockout)")
    user_passwd.add_argument("name")
    for action in (user_add, user_passwd):
        action.add_argument("--password-stdin", action="store_true",
                            help="read the password as one line from standard input")
    user_actions.add_parser("list", help="accounts, roles, states and last logins")
    for verb, what in (("disable", "disable an account and end its sessions"),
                       ("enable", "enable a disabled account again")):
        user_actions.add_parser(verb, help=what).add_argument("name")

    dicomweb = commands.add_parser("dicomweb", help="DICOMweb peers (STOW-RS senders)")
    dicomweb_actions = dicomweb.add_subparsers(dest="action", required=True)
    dicomweb_token = dicomweb_actions.add_parser(
        "token", help="print a new bearer token for a peer and the dicomweb.peers entry "
        "(its SHA-256) to add to the configuration; the node never stores the token")
    dicomweb_certificate = dicomweb_actions.add_parser(
        "certificate", help="print the dicomweb.peers entry (the SHA-256 of the certificate) "
        "that admits a peer presenting this client certificate")
    for action in (dicomweb_token, dicomweb_certificate):
        action.add_argument("name", help="the peer's name (1-16 of A-Z a-z 0-9 _ . -), "
                            "recorded as the sender of what it stores")
    dicomweb_certificate.add_argument("certificate", type=Path, metavar="CERT.pem",
                                      help="the peer's client certificate (PEM)")

    echo = commands.add_parser("echo", help="send a C-ECHO to a DICOM node, or check a "
                               "configured destination (C-ECHO, or QIDO-RS for DICOMweb)")
    echo.add_argument("host", nargs="?")
    echo.add_argument("port", nargs="?", type=int)
    echo.add_argument("--destination", metavar="NAME",
                      help="a configured destination instead of HOST PORT: a C-ECHO to its "
                      "AE (with its TLS), or a QIDO-RS query to its url with its credentials")
    echo.add_argument("--aet", default="CXRNODE", help="our (calling) AE title")
    echo.add_argument("--aec", default="ANY-SCP", help="the peer's (called) AE title")

    studies = commands.add_parser("studies", help="recent studies: instances, completion, jobs")
    studies.add_argument("--limit", type=int, default=20)

    synth = commands.add_parser("synth", help="write synthetic chest radiographs and labels")
    synth.add_argument("--out", required=True, type=Path)
    synth.add_argument("--count", required=True, type=int)
    synth.add_argument("--seed", required=True, type=int)
    synth.add_argument("--min-size", type=int, default=1500, help="smallest rows/columns")
    synth.add_argument("--max-size", type=int, default=3000, help="largest rows/columns")
    synth.add_argument("--normal-fraction", type=float, default=0.3)
    synth.add_argument("--workers", type=int, default=1,
                       help="processes drawing cases (same files as one)")
    synth.add_argument("--onto", type=Path, metavar="FILE", help="insert findings into this "
                       "real radiograph instead of drawing whole synthetic ones (sizes unused)")
    synth.add_argument("--style", choices=("classic", "radiograph"), default="classic",
                       help="classic: the images the bundled model was trained on; "
                       "radiograph: the look of a real chest film (physical projection, "
                       "scatter, noise, vendor processing, PA/AP, devices, textured findings)")

    train = commands.add_parser("train", help="train the detector on a labelled folder")
    train.add_argument("--data", required=True, type=Path, help="folder with labels.csv")
    train.add_argument("--out", required=True, type=Path, help="run folder (resumes if present)")
    train.add_argument("--architecture", default="tf_efficientdet_d0")
    train.add_argument("--image-size", type=int, default=512)
    train.add_argument("--anchor-scale", type=float, default=4.0,
                       help="EfficientDet anchor size per stride (smaller finds smaller objects)")
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--warmup-epochs", type=float, default=1.0,
                       help="epochs of linear learning-rate warm-up before the cosine decay "
                       "(a fine-tune from --init-from needs a fraction of one)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="auto")
    train.add_argument("--workers", type=int, default=1, help="data-loading processes")
    train.add_argument("--init-from", type=Path, help="model folder to fine-tune from")
    train.add_argument("--init-backbone", type=Path, metavar="FILE",
                       help="timm ImageNet checkpoint of the backbone (e.g. tf_efficientnet_b0 "
                       "for tf_efficientdet_d0; .pth or .safetensors), a local file")
    train.add_argument("--version", default="0.1.0", help="version written into the card")
    train.add_argument("--target-sensitivity", type=float, default=0.90,
                       help="operating point the thresholds are chosen for on validation")
    train.add_argument("--target-specificity", type=float, default=0.90)
    train.add_argument("--mlflow-uri", help="also log the run to this MLflow tracking URI "
                       "(needs the mlflow extra; default: $MLFLOW_TRACKING_URI if set)")
    scaling = train.add_argument_group(
        "several GPUs or hosts", "train in processes that torchrun starts (one per GPU; "
        "--batch-size is the global batch, split evenly over them); or run this command "
        "under torchrun yourself: torchrun [options] -m node.cli train ...")
    scaling.add_argument("--nproc-per-node", type=int, metavar="N",
                         help="processes on this host (default 1)")
    scaling.add_argument("--nnodes", type=int, default=1, help="hosts (default 1)")
    scaling.add_argument("--node-rank", type=int, default=0,
                         help="this host's number, 0..nnodes-1 (with --master-addr)")
    scaling.add_argument("--master-addr", metavar="HOST",
                         help="the host with --node-rank 0")
    scaling.add_argument("--master-port", type=int, metavar="PORT", help="default 29500")
    scaling.add_argument("--rdzv-endpoint", metavar="HOST:PORT",
                         help="instead of --master-addr: any one host, the same command "
                         "on every host (torchrun's c10d rendezvous)")

    calibrate = commands.add_parser(
        "calibrate", help="choose a model's thresholds again on its validation split, as a "
        "new version with the same weights")
    calibrate.add_argument("--model", type=Path, default=BUNDLED_MODEL)
    calibrate.add_argument("--data", required=True, type=Path,
                           help="the folder the model was trained on (labels.csv)")
    calibrate.add_argument("--out", required=True, type=Path, help="new model folder")
    calibrate.add_argument("--version", required=True, help="version written into the card")
    calibrate.add_argument("--target-sensitivity", type=float, default=0.90)
    calibrate.add_argument("--target-specificity", type=float, default=0.90)
    calibrate.add_argument("--seed", type=int, default=0, help="the split seed training used")
    calibrate.add_argument("--validation-data", type=Path,
                           help="the validation folder training used, if it had one")
    calibrate.add_argument("--device", default=None)

    evaluate = commands.add_parser("evaluate", help="evaluate a model on a labelled folder")
    evaluate.add_argument("--data", required=True, type=Path, help="folder with labels.csv")
    evaluate.add_argument("--model", type=Path, default=BUNDLED_MODEL)
    evaluate.add_argument("--out", required=True, type=Path)
    evaluate.add_argument("--device", default=None)
    evaluate.add_argument("--record-in-card", metavar="NAME",
                          help="also write the figures into the model card as metrics[NAME]")
    return parser


def _utc_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'"{text}" is not a date or time '
                                         "(YYYY-MM-DD or YYYY-MM-DDTHH:MM)") from None
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _configure_logging(settings: Settings) -> None:
    rank = os.environ.get("RANK")  # set by torchrun in each training process
    logging.basicConfig(level=settings.logging.level,
                        format="%(asctime)s %(levelname)s "
                        + (f"[rank {rank}] " if rank is not None else "")
                        + "%(name)s: %(message)s")
    if rank not in (None, "0"):  # rank 0 tells the story once
        logging.root.setLevel(max(logging.WARNING, logging.root.level))
    # pynetdicom narrates every PDU at INFO; keep its warnings and errors only.
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, logging.root.level))
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.root.level))


def echo(host: str, port: int, calling: str, called: str,
         tls_args: tuple | None = None) -> int:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    from node.scp import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

    ae = AE(ae_title=calling)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=called, tls_args=tls_args)
    if not assoc.is_established:
        reason = ("rejected" if assoc.is_rejected
                  else "no association (refused, aborted or timed out)")
        print(f"C-ECHO to {called}@{host}:{port}: {reason}")
        return 1
    status = assoc.send_c_echo()
    assoc.release()
    if not status:
        print(f"C-ECHO to {called}@{host}:{port}: no response")
        return 1
    print(f"C-ECHO to {called}@{host}:{port}: status 0x{status.Status:04X}")
    return 0 if status.Status == 0 else 1


def echo_destination(settings: Settings, name: str) -> int:
    """Check a configured destination as the sender reaches it: 0 when it answers."""
    from config.settings import DestinationKind

    destination = settings.destination(name)
    if destination is None:
        names = ", ".join(d.name for d in settings.destinations) or "none"
        return _refuse("cxr-node echo", f"--destination {name}: no such destination "
                       f"(configured: {names})")
    if destination.kind == DestinationKind.DICOMWEB:
        from node.dicomweb_send import qido_check

        ok, line = qido_check(destination)
        print(line)
        return 0 if ok else 1
    from node.sender import client_tls

    return echo(destination.host, destination.port, settings.dicom.ae_title,
                destination.ae_title, client_tls(destination))


def _refuse(command: str, message: str) -> int:
    """One line per problem on stderr, as argparse does for a bad argument; exit status 2.

    Of the processes torchrun started, only rank 0 prints: all of them meet the problem.
    """
    if os.environ.get("RANK", "0") == "0":
        for line in message.splitlines():
            print(f"{command}: error: {line}", file=sys.stderr)
    return 2


def _argument_error(exc: ValueError, args: argparse.Namespace) -> str:
    """A library's ``ValueError`` about a parameter, with the parameter named as an option.

    ``seed 73020 is outside 0..9999`` from the phantom becomes ``--seed 73020 is outside
    0..9999``, so the operator sees which argument to change.
    """
    message = str(exc)
    first = message.split(" ", 1)[0]
    if first in vars(args) and first not in ("command", "action", "config"):
        return f"--{first.replace('_', '-')}{message[len(first):]}"
    return message


def _dicomweb(args: argparse.Namespace) -> int:
    """``cxr-node dicomweb token|certificate``: the ``dicomweb.peers`` entry for a peer."""
    from config.settings import check_dicomweb_peer_name
    from node.web.dicomweb.peers import certificate_entry, new_token

    command = f"cxr-node dicomweb {args.action}"
    try:
        check_dicomweb_peer_name(args.name)
    except ValueError as exc:  # a name the configuration would refuse
        return _refuse(command, f"NAME {exc}")
    if args.action == "token":
        token, entry = new_token(args.name)
        print(f"token for {args.name} (give it to the sender; it is shown only now): {token}")
        print(f"add under dicomweb.peers: - {entry}")
        return 0
    try:
        entry, comment = certificate_entry(args.name, args.certificate.read_bytes())
    except OSError as exc:
        return _refuse(command, f"{args.certificate}: {exc.strerror or exc}")
    except ValueError as exc:
        return _refuse(command, f"{args.certificate} {exc}")
    print(comment)
    print(f"add under dicomweb.peers: - {entry}")
    return 0


def _backup_or_restore(args: argparse.Namespace, settings: Settings) -> int:
    """``cxr-node backup`` / ``restore``: a summary line, or one line saying why not (exit 2).

    Backup reads the database as it is (never migrates it); restore migrates what it
    restored to this version's schema, as ``serve`` would at start.
    """
    from node.preflight import connect_database
    from storage.backup import BackupError, write_backup
    from storage.restore import restore_backup

    command = f"cxr-node {args.command}"
    try:
        if args.command == "backup":
            db = connect_database(settings, upgrade=False)
            try:
                summary = write_backup(db.engine, settings.storage, args.out, BUNDLED_MODEL)
            finally:
                db.dispose()
            done = f"backup {args.out}: "
        else:
            summary, revision = restore_backup(settings.storage, args.file, BUNDLED_MODEL)
            done = f"restored {args.file} (database revision {revision}, now migrated): "
    except BackupError as exc:
        return _refuse(command, str(exc))
    except OSError as exc:  # a full disk, a folder we may not write: nothing was left
        print(f"{command}: error: {exc.strerror or exc}: {exc.filename or ''}; nothing was "
              "left behind", file=sys.stderr)
        return 1
    for line in summary.warnings():
        print(f"{command}: warning: {line}", file=sys.stderr)
    print(done + summary.counts())
    return 0


def _check_launched(args: argparse.Namespace) -> None:
    """Under torchrun the launch options describe the launch that started this process
    (``cxr-node train --nproc-per-node N`` passes them on); refuse ones that do not."""
    started = int(os.environ.get("LOCAL_WORLD_SIZE", "0")) or None
    if args.nproc_per_node not in (None, started):
        raise ValueError(f"nproc_per_node {args.nproc_per_node} given, but torchrun started "
                         f"{started} processes on this host: give the number once")


def _check_retrain_processes(args: argparse.Namespace, settings: Settings) -> str | None:
    """Why ``cxr-node retrain`` cannot start its training processes as asked, or None."""
    if "WORLD_SIZE" in os.environ:
        return ("retrain starts its own training processes (--nproc-per-node, "
                "training.nproc_per_node): run it without torchrun")
    if args.nproc_per_node is None:
        return None  # the setting is checked where it is used
    from training.distributed import Launch

    try:
        Launch(nproc_per_node=args.nproc_per_node).check_devices(
            args.device, settings.training.batch_size)
    except ValueError as exc:
        message = _argument_error(exc, args)
        return message.replace("batch_size", "training.batch_size", 1) \
            if message.startswith("batch_size") else message
    return None


def _format_map(value: float | None) -> str:
    """A mAP, or why there is none: a labelled set without a single box cannot measure it."""
    return "n/a (no boxes in the data)" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    # At exit the interpreter's last garbage collections walk every object left, and a
    # process that imported torch (serve, worker, train, evaluate ...) has millions: 1.4-1.6 s
    # of a stopped node's exit, 0.3 s when they are frozen first. The memory goes back to
    # the operating system either way; atexit handlers (logging's flush) still run.
    atexit.register(gc.freeze)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        _configure_logging(settings)
        return _run(args, settings, argv)
    except ConfigError as exc:  # the operator's to fix: the message names the key
        return _refuse("cxr-node", str(exc))


def _run(args: argparse.Namespace, settings: Settings, argv: list[str]) -> int:
    if args.command == "serve":
        from node.server import serve

        return serve(settings)
    if args.command == "demo":
        from node.demo import run_demo
        from node.viewer import DEFAULT_OHIF_DIST, ViewerUnavailable, check_ohif

        viewer = None
        if args.viewer:
            try:
                viewer = check_ohif(args.ohif_dist or DEFAULT_OHIF_DIST)
            except ViewerUnavailable as exc:
                return _refuse("cxr-node demo", str(exc))
        logging.getLogger().setLevel(logging.WARNING)  # the table is the demo's output
        warnings.filterwarnings("ignore", category=UserWarning, module="highdicom")
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch")
        summary = run_demo(args.out, viewer_dist=viewer)
        return 0 if summary["studies_with_results"] == summary["studies_sent"] else 1
    if args.command == "dataset":
        from training.dataset_import import DatasetImportError, import_dataset, summary_text

        try:
            summary = import_dataset(
                args.format, args.file, args.images, args.out, data_entry=args.data_entry,
                test_fraction=args.test_fraction, seed=args.seed,
                pneumonia_as=settings.labels.nih_pneumonia_as,
                consensus=settings.labels.vindr_consensus, iou=settings.labels.vindr_iou)
        except (DatasetImportError, OSError) as exc:  # nothing was written
            return _refuse("cxr-node dataset import", str(exc))
        print(summary_text(summary, args.out))
        return 0
    if args.command in ("labels", "retrain", "models"):
        from node import admin

        if args.command == "labels":
            return admin.import_labels(settings, args.file, args.format)
        if args.command == "retrain":
            if args.init_backbone and not args.from_scratch:
                return _refuse("cxr-node retrain", "--init-backbone goes with --from-scratch: "
                               "fine-tuning starts from the active model's whole network")
            refused = _check_retrain_processes(args, settings)
            if refused:
                return _refuse("cxr-node retrain", refused)
            return admin.retrain(settings, args.from_scratch, args.epochs, args.image_size,
                                 args.device, args.init_backbone, args.nproc_per_node)
        if args.action == "register":
            return admin.register_model(settings, args.model_dir, args.device)
        if args.action == "promote":
            return admin.promote_model(settings, args.id, args.override)
        return {"list": admin.list_models, "rollback": admin.rollback_model}[args.action](
            settings)
    if args.command == "scheduler":
        from node.scheduler import list_jobs, serve_scheduler

        return list_jobs(settings) if args.action == "jobs" else serve_scheduler(settings)
    if args.command == "report":
        from model.vocabulary import DEFAULT_LABELS
        from node.admin import database
        from node.audit_report import write_audit_report

        until = args.until or datetime.now(UTC).replace(tzinfo=None)
        since = args.since or until - timedelta(hours=24)
        if since >= until:
            return _refuse("cxr-node report", f"--since {since:%Y-%m-%d %H:%M} is not before "
                           f"--until {until:%Y-%m-%d %H:%M}; give an earlier --since")
        with database(settings) as db:
            write_audit_report(db, since, until, args.out, DEFAULT_LABELS)
        print(f"audit report for {since:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M} UTC: "
              f"{args.out / 'audit-report.html'} (and audit-report.json)")
        return 0
    if args.command == "worker":
        from node.server import work

        return work(settings)
    if args.command == "web":
        from node.server import serve_web

        return serve_web(settings)
    if args.command in ("backup", "restore"):
        return _backup_or_restore(args, settings)
    if args.command == "transfers":
        from node.admin import list_transfers, retry_transfers

        if args.action == "retry":
            return retry_transfers(settings, args.ids)
        return list_transfers(settings, args.limit, args.all)
    if args.command == "users":
        from node import users
        from storage.accounts import AccountError

        try:
            if args.action == "add":
                users.add_user(settings, args.name, args.role, args.password_stdin)
            elif args.action == "passwd":
                users.change_password(settings, args.name, args.password_stdin)
            elif args.action in ("disable", "enable"):
                users.set_disabled(settings, args.name, args.action == "disable")
            else:
                users.list_users(settings)
        except AccountError as exc:  # a bad name, role or password; an unknown or taken name
            return _refuse(f"cxr-node users {args.action}", str(exc))
        except (EOFError, KeyboardInterrupt):
            return _refuse(f"cxr-node users {args.action}", "no password given; nothing changed")
        return 0
    if args.command == "dicomweb":
        return _dicomweb(args)
    if args.command == "echo":
        if args.destination is not None:
            if args.host is not None:
                return _refuse("cxr-node echo", "give HOST PORT or --destination, not both")
            return echo_destination(settings, args.destination)
        if args.host is None or args.port is None:
            return _refuse("cxr-node echo", "give HOST PORT, or --destination NAME")
        return echo(args.host, args.port, args.aet, args.aec)
    if args.command == "studies":
        from node.admin import list_studies

        return list_studies(settings, args.limit)
    if args.command == "synth":
        from model.phantom import write_synthetic_set
        from model.phantom.insertion import write_inserted_set

        try:
            if args.onto:
                labels = write_inserted_set(args.onto, args.out, args.count, args.seed,
                                            normal_fraction=args.normal_fraction,
                                            style=args.style)
            else:
                labels = write_synthetic_set(args.out, args.count, args.seed,
                                             workers=args.workers,
                                             size_range=(args.min_size, args.max_size),
                                             normal_fraction=args.normal_fraction,
                                             style=args.style)
        except ValueError as exc:  # the phantom checks its parameters up front
            return _refuse("cxr-node synth", _argument_error(exc, args))
        made = f"radiographs with findings inserted into {args.onto}" if args.onto else \
            "synthetic radiographs"
        print(f"wrote {args.count} {made}; labels in {labels}")
        return 0
    if args.command == "train":
        from training.distributed import Launch, launch, under_launcher
        from training.train import TrainConfig, check_resume, train

        try:
            config = TrainConfig(
                data=args.data, out=args.out, architecture=args.architecture,
                image_size=args.image_size, anchor_scale=args.anchor_scale, epochs=args.epochs,
                batch_size=args.batch_size, learning_rate=args.lr,
                warmup_epochs=args.warmup_epochs, seed=args.seed, device=args.device,
                init_from=args.init_from, init_backbone=args.init_backbone,
                version=args.version, workers=args.workers,
                target_sensitivity=args.target_sensitivity,
                target_specificity=args.target_specificity, mlflow_tracking_uri=args.mlflow_uri)
            processes = 1 if args.nproc_per_node is None else args.nproc_per_node
            how = Launch(nproc_per_node=processes, nnodes=args.nnodes, node_rank=args.node_rank,
                         master_addr=args.master_addr, master_port=args.master_port,
                         rdzv_endpoint=args.rdzv_endpoint)
            if under_launcher():
                _check_launched(args)
            elif how.world_size > 1:
                how.check_devices(args.device, args.batch_size)
                check_resume(args.out, config)  # here, not once the processes have started
                # The same command in each process, where torchrun's variables make it train.
                return launch(how, "node.cli", argv)
            model_dir = train(config)
        except ValueError as exc:  # TrainError (e.g. a resume with other settings), a bad
            # labels.csv or launch option, a backbone file that does not fit: the message
            # names the problem
            return _refuse("cxr-node train", _argument_error(exc, args))
        if os.environ.get("RANK", "0") == "0":
            print(f"best model: {model_dir}")
        return 0
    if args.command == "calibrate":
        from training.calibrate import calibrate

        try:
            card = calibrate(args.model, args.data, args.out, args.version,
                             args.target_sensitivity, args.target_specificity, seed=args.seed,
                             validation_data=args.validation_data, device=args.device)
        except ValueError as exc:  # CardError included
            return _refuse("cxr-node calibrate", str(exc))
        print(f"{card.name} {card.version} in {args.out}; thresholds "
              + ", ".join(f"{label} {value:.3f}" for label, value in card.thresholds.items()))
        return 0
    if args.command == "evaluate":
        from training.evaluate import evaluate_model

        report = evaluate_model(args.model, args.data, args.out, args.device,
                                args.record_in_card)
        print(f"mAP@0.5 {_format_map(report['map50'])}, "
              f"mAP@0.4 {_format_map(report['map40'])}; report in {args.out}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
