"""The node's durable state, as SQLAlchemy 2 models.

Every hand-over between the node's parts (receiver, completion monitor, workers,
senders) goes through these tables, so each part can run as its own process and many
processes can share one PostgreSQL. Times are stored as naive UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

UID = String(64)
AE_TITLE = String(16)
# PN: three component groups of up to 64 characters each, with their separators.
PATIENT_NAME_LENGTH = 194


def utcnow() -> datetime:
    """Naive UTC now: the one time convention of every column here."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class StudyState(StrEnum):
    RECEIVING = "receiving"  # instances arriving, or the quiet period not yet over
    COMPLETE = "complete"  # quiet period over; a job for this generation was queued


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    # DICOM PN as sent (``FAMILY^GIVEN``...): the console's search by name.
    patient_name: Mapped[str | None] = mapped_column(String(PATIENT_NAME_LENGTH))
    accession_number: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_description: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[StudyState] = mapped_column(String(16), default=StudyState.RECEIVING)
    # Bumped each time a late or replaced instance re-opens the study; one job per value.
    generation: Mapped[int] = mapped_column(Integer, default=1)
    first_received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_instance_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime)

    series: Mapped[list[Series]] = relationship(back_populates="study")
    jobs: Mapped[list[Job]] = relationship(back_populates="study")

    __table_args__ = (Index("ix_studies_state_last_instance", "state", "last_instance_at"),)


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_uid: Mapped[str] = mapped_column(UID, unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part_examined: Mapped[str | None] = mapped_column(String(16))
    series_description: Mapped[str | None] = mapped_column(String(64))
    series_number: Mapped[int | None] = mapped_column(Integer)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    # Relative to the data directory, so a volume can be mounted elsewhere.
    path: Mapped[str] = mapped_column(String(300))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    calling_ae_title: Mapped[str | None] = mapped_column(AE_TITLE)
    received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # Objects this node produced (its device UID); they never queue analysis.
    produced_by_node: Mapped[bool] = mapped_column(Boolean, default=False)
    # When retention deleted the file (the row stays: findings and labels refer to it).
    purged_at: Mapped[datetime | None] = mapped_column(DateTime)

    series: Mapped[Series] = relationship(back_populates="instances")


class QueuedWork:
    """The columns of a queue table that processes claim under a lease (storage.leases)."""

    state: Mapped[JobState] = mapped_column(String(16), default=JobState.QUEUED)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)


class Job(QueuedWork, Base):
    """One analysis of one study generation; claimed by a worker under a lease."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    study_generation: Mapped[int] = mapped_column(Integer)

    study: Mapped[Study] = relationship(back_populates="jobs")

    __table_args__ = (
        # The database, not the code, guarantees one job per study generation.
        UniqueConstraint("study_id", "study_generation", name="uq_jobs_study_generation"),
        Index("ix_jobs_state_created", "state", "created_at"),
    )


class ImageAnalysis(Base):
    """What a job did with one image: analysed, or skipped with the reason why."""

    __tablename__ = "image_analyses"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"))
    analysed: Mapped[bool] = mapped_column(Boolean)
    skip_reason: Mapped[str | None] = mapped_column(Text)
    model_version: Mapped[str | None] = mapped_column(String(64))

    instance: Mapped[Instance] = relationship()

    __table_args__ = (UniqueConstraint("job_id", "instance_id", name="uq_image_analyses_job"),)


class FindingRecord(Base):
    """One detection above its threshold: coded label, probability, box in original pixels."""

    __tablename__ = "findings"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"), index=True)
    label: Mapped[str] = mapped_column(String(64))
    code_scheme: Mapped[str] = mapped_column(String(16))
    code_value: Mapped[str] = mapped_column(String(64))
    code_meaning: Mapped[str] = mapped_column(String(128))
    score: Mapped[float] = mapped_column(Float)
    # x1, y1, x2, y2 with (0, 0) the top-left corner of the first pixel (PS3.3 C.18.6.1.2).
    x1: Mapped[float] = mapped_column(Float)
    y1: Mapped[float] = mapped_column(Float)
    x2: Mapped[float] = mapped_column(Float)
    y2: Mapped[float] = mapped_column(Float)
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    instance: Mapped[Instance] = relationship()


class ResultKind(StrEnum):
    SR = "sr"  # TID 1500 measurement report with the findings (or "no findings")
    NOT_ANALYSED_SR = "not-analysed-sr"  # says why the AI did not read the study
    GSPS = "gsps"  # boxes and labels as a presentation state on the source images
    SC = "sc"  # secondary capture with the boxes burned in


class ResultObject(Base):
    """A DICOM object this node wrote, kept on disk so every retry sends the same UIDs."""

    __tablename__ = "result_objects"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    kind: Mapped[ResultKind] = mapped_column(String(24))
    sop_class_uid: Mapped[str] = mapped_column(UID)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class TransferState(StrEnum):
    PENDING = "pending"  # waiting for its next attempt
    SENDING = "sending"  # claimed by a sender under a lease
    SENT = "sent"
    DEAD = "dead"  # gave up after the maximum age; `cxr-node transfers retry` re-queues


class Transfer(Base):
    """The outbox: one result object to one destination, retried with back-off."""

    __tablename__ = "transfers"

    id: Mapped[int] = mapped_column(primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("result_objects.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    state: Mapped[TransferState] = mapped_column(String(16), default=TransferState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    queued_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime)

    result: Mapped[ResultObject] = relationship()

    __table_args__ = (
        UniqueConstraint("result_id", "destination", name="uq_transfers_result_destination"),
        Index("ix_transfers_state_next_attempt", "state", "next_attempt_at"),
    )


class LabelBatch(Base):
    """One labelling of one study (an SR, an import): the newest supersedes the older ones.

    Superseded batches and their labels stay, so the history of who said what is kept.
    """

    __tablename__ = "label_batches"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    source: Mapped[str] = mapped_column(String(16))  # sr, nih, vindr, csv
    labeller: Mapped[str] = mapped_column(String(128))  # person, AE title or file name
    # The SR's SOP Instance UID, or the imported file's SHA-256.
    source_reference: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    superseded_at: Mapped[datetime | None] = mapped_column(DateTime)

    labels: Mapped[list[Label]] = relationship(back_populates="batch")


class Label(Base):
    """A box (or an image-level statement) a radiologist or a dataset gave an image."""

    __tablename__ = "labels"

    id: Mapped[int] = mapped_column(primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("label_batches.id"), index=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"), index=True)
    # Vocabulary label; empty for a code outside the model's vocabulary (kept, reported).
    label: Mapped[str | None] = mapped_column(String(64))
    code_scheme: Mapped[str | None] = mapped_column(String(16))
    code_value: Mapped[str | None] = mapped_column(String(64))
    code_meaning: Mapped[str | None] = mapped_column(String(128))
    normal: Mapped[bool] = mapped_column(Boolean, default=False)
    x1: Mapped[float | None] = mapped_column(Float)
    y1: Mapped[float | None] = mapped_column(Float)
    x2: Mapped[float | None] = mapped_column(Float)
    y2: Mapped[float | None] = mapped_column(Float)
    reader: Mapped[str | None] = mapped_column(String(128))

    batch: Mapped[LabelBatch] = relationship(back_populates="labels")
    instance: Mapped[Instance] = relationship()


class LabelIntakeJob(QueuedWork, Base):
    """An SR from a peer, waiting for the label intake to read it.

    Queued in the transaction that registers the instance, so the C-STORE answer waits
    only for the store and that commit; a loop reads the report afterwards under a lease,
    as workers claim analysis jobs (states as :class:`JobState`).
    """

    __tablename__ = "label_intake_jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"), index=True)
    calling_ae_title: Mapped[str] = mapped_column(AE_TITLE)

    instance: Mapped[Instance] = relationship()

    __table_args__ = (Index("ix_label_intake_jobs_state_created", "state", "created_at"),)


class Split(StrEnum):
    TRAIN = "train"
    VALIDATION = "validation"
    TEST = "test"  # locked: every model version is compared on it


class DatasetSplit(Base):
    """The split a labelled study belongs to; assigned once and never changed."""

    __tablename__ = "dataset_splits"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), unique=True)
    patient_key: Mapped[str] = mapped_column(String(64), index=True)
    split: Mapped[Split] = mapped_column(String(16))
    assigned_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class DatasetSnapshot(Base):
    """A frozen set of labelled images (written as a labels file) and its fingerprint."""

    __tablename__ = "dataset_snapshots"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    fingerprint: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(300))  # folder with train/, validation/, test/
    counts: Mapped[str] = mapped_column(Text)  # JSON: images per split and finding


class ModelState(StrEnum):
    CANDIDATE = "candidate"
    ACTIVE = "active"  # exactly one; the workers run it
    RETIRED = "retired"


class ModelVersion(Base):
    """A model in the registry: its card and files, test-set figures, lineage and state."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    state: Mapped[ModelState] = mapped_column(String(16), default=ModelState.CANDIDATE)
    path: Mapped[str] = mapped_column(String(500))  # the model folder (card.json and weights)
    weights_sha256: Mapped[str] = mapped_column(String(64))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    snapshot_id: Mapped[int | None] = mapped_column(ForeignKey("dataset_snapshots.id"))
    # JSON: per-finding sensitivity/specificity on the locked test set, and what it was.
    test_metrics: Mapped[str | None] = mapped_column(Text)
    # Why the promotion gate said no (or yes), in words.
    gate_report: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(DateTime)
    retired_at: Mapped[datetime | None] = mapped_column(DateTime)

    __table_args__ = (
        UniqueConstraint("name", "version", name="uq_model_versions_name_version"),
        # The database, not the code, keeps "exactly one active model" true.
        Index("uq_model_versions_one_active", "state", unique=True,
              sqlite_where=text("state = 'active'"), postgresql_where=text("state = 'active'")),
    )


class TaskRun(Base):
    """One scheduled occurrence of a task (retraining, report, retention), run once.

    The unique (task, scheduled_for) pair is the ticket: of several scheduler processes
    firing the same occurrence, one inserts the row and runs it, the others see it taken.
    """

    __tablename__ = "task_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    task: Mapped[str] = mapped_column(String(32))
    scheduled_for: Mapped[datetime] = mapped_column(DateTime)
    owner: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    outcome: Mapped[str] = mapped_column(String(16), default="running")  # done/failed/skipped
    message: Mapped[str] = mapped_column(Text, default="")

    __table_args__ = (UniqueConstraint("task", "scheduled_for", name="uq_task_runs_occurrence"),)


class AuditEvent(Base):
    """One audit record, coded as IHE ATNA / DICOM PS3.15 A.5 audit messages."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    event_id: Mapped[str] = mapped_column(String(16))  # DCM code, e.g. "110104"
    event_type: Mapped[str] = mapped_column(String(64))  # ours, e.g. "association-rejected"
    outcome: Mapped[int] = mapped_column(Integer)  # 0 success, 4 minor, 8 serious, 12 major
    calling_ae_title: Mapped[str | None] = mapped_column(AE_TITLE)
    called_ae_title: Mapped[str | None] = mapped_column(AE_TITLE)
    peer_address: Mapped[str | None] = mapped_column(String(64))
    study_uid: Mapped[str | None] = mapped_column(UID)
    sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    # ATNA ActiveParticipant UserID of a person: a console account, or "cli:<os user>".
    user_name: Mapped[str | None] = mapped_column(String(80))
    message: Mapped[str] = mapped_column(Text, default="")


class UserRole(StrEnum):
    """Console roles, each including the one before: viewer < operator < admin."""

    VIEWER = "viewer"  # reads
    OPERATOR = "operator"  # retries transfers, analyses again, runs jobs
    ADMIN = "admin"  # promotes, rolls back, imports labels, manages users

    @property
    def rank(self) -> int:
        return list(UserRole).index(self)

    def allows(self, needed: UserRole) -> bool:
        return self.rank >= UserRole(needed).rank


class User(Base):
    """A console account; the password only as an argon2id hash (PHC string)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[UserRole] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # Failed logins since the last success or lock; at web.max_failed_logins it locks.
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    password_changed_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime)


class WebSession(Base):
    """A logged-in browser: the SHA-256 of its cookie's token, never the token itself."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    source_address: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime, index=True)
