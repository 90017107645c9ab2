"""The server's long-lived services, built once from Settings and shared by the routers."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from aiaa_server.datastore import DatastoreLimits, LocalDatastore
from aiaa_server.inference.pool import InferencePool
from aiaa_server.logs import LogTail
from aiaa_server.metrics import HttpMetrics, MetricsRegistry
from aiaa_server.mmar.admin import ModelAdmin
from aiaa_server.mmar.archives import ArchiveLimits
from aiaa_server.mmar.registry import ModelRegistry
from aiaa_server.mmar.sandbox import SandboxLimits
from aiaa_server.mmar.store import ModelStore
from aiaa_server.mmar.versions import ModelVersions
from aiaa_server.security import AdminPolicy
from aiaa_server.services.datastore import DatastoreService
from aiaa_server.services.inference import InferenceService
from aiaa_server.services.monai_label import MonaiLabelService
from aiaa_server.services.polygons import PolygonService
from aiaa_server.services.runtime import factory_from_settings, tune_process
from aiaa_server.services.system import SystemService
from aiaa_server.services.training import TrainingLimits, TrainingService
from aiaa_server.services.uncertainty import UncertaintyScorer
from aiaa_server.sessions import SessionStore
from aiaa_server.sessions.backends import session_backend
from aiaa_server.settings import Settings

log = logging.getLogger("aiaa_server.services")  # the logger name log readers knew before the package split


@dataclass
class Services:
    """Every long-lived service of one server, built once from Settings (`build`) and shared by the routers."""

    settings: Settings
    registry: ModelRegistry
    inference: InferenceService
    pool: InferencePool
    metrics: MetricsRegistry
    http_metrics: HttpMetrics
    log_tail: LogTail
    sessions: SessionStore
    datastore: DatastoreService
    admin_policy: AdminPolicy = field(init=False)
    model_admin: ModelAdmin = field(init=False)
    polygons: PolygonService = field(init=False)
    system: SystemService = field(init=False)
    training: TrainingService = field(init=False)
    uncertainty: UncertaintyScorer = field(init=False)
    monai_label: MonaiLabelService = field(init=False)

    def __post_init__(self) -> None:
        settings = self.settings
        token = settings.admin_token.get_secret_value() if settings.admin_token is not None else None
        self.admin_policy = AdminPolicy.build(token, settings.admin_hosts)
        self.model_admin = _model_admin(settings, self.registry)
        self.polygons = PolygonService(settings.decode_limits)
        self.system = SystemService(self.registry, self.log_tail)
        self.training = _training(settings, self.registry, self.datastore)
        self.pool.on_busy = self.training.pause_while
        self.uncertainty = UncertaintyScorer(self.registry, self.pool, self.datastore, settings.uncertainty_model,
                                             settings.uncertainty_interval)
        self.monai_label = MonaiLabelService(self.registry, self.inference, self.datastore, self.training,
                                             self.uncertainty)
        _training_metrics(self.metrics, self.training)
        _uncertainty_metrics(self.metrics, self.uncertainty)

    @classmethod
    def build(cls, settings: Settings, log_tail: LogTail) -> Services:
        """Prepare the workspace, tune the process and build every service (models are loaded by `load_models`)."""
        settings.prepare_workspace()
        tune_process(settings)
        engines = factory_from_settings(settings)  # picks local or Triton per model
        registry = ModelRegistry(engines, default_device=settings.device)
        metrics = MetricsRegistry()
        pool = InferencePool(
            settings.workers, settings.max_queue, batch_max_wait=settings.batch_max_wait,
            reserve_interactive=settings.reserve_interactive, batch_nice=settings.batch_nice,
            registry=metrics,
        )
        sessions = _session_store(settings)
        inference = InferenceService(registry, pool, gzip_level=settings.result_gzip_level, sessions=sessions,
                                     max_clicks=settings.max_clicks, limits=settings.decode_limits)
        return cls(settings=settings, registry=registry, inference=inference, pool=pool, metrics=metrics,
                   http_metrics=HttpMetrics(metrics), log_tail=log_tail, sessions=sessions,
                   datastore=_datastore(settings))

    def load_models(self) -> None:
        """Scan the model folders; uploaded models run without their own code unless `--allow_uploaded_code`."""
        settings = self.settings
        uploads = () if settings.allow_uploaded_code else (settings.workspace_models_dir,)
        self.registry.scan(settings.model_dirs, untrusted=uploads)
        self.training.restore_serving()
        log.info("serving %d model(s): %s", len(self.registry), ", ".join(self.registry.names()) or "none")

    def close(self) -> None:
        """Stop uncertainty scoring and the inference pool (without waiting), close the session store and the
        datastore."""
        self.uncertainty.close()
        self.pool.shutdown(wait=False)
        self.sessions.close()
        self.training.shutdown()
        self.datastore.datastore.close()


def _model_admin(settings: Settings, registry: ModelRegistry) -> ModelAdmin:
    limits = ArchiveLimits(max_files=settings.max_archive_files, max_bytes=settings.max_archive_mb * 2**20)
    return ModelAdmin(
        ModelStore(settings.workspace_models_dir, limits),
        registry,
        fallback_dirs=[d for d in settings.model_dirs if d != settings.workspace_models_dir],
        allow_code=settings.allow_uploaded_code,
        default_device=settings.device,
        sandbox=SandboxLimits(memory_bytes=settings.validation_memory_mb * 2**20,
                              cpu_seconds=int(settings.validation_timeout),
                              wall_seconds=settings.validation_timeout),
    )


def _datastore(settings: Settings) -> DatastoreService:
    limits = DatastoreLimits(max_image_bytes=settings.max_request_bytes, max_label_bytes=settings.max_request_bytes,
                             max_images=settings.datastore_max_images, lock_seconds=settings.datastore_lock_seconds,
                             max_lock_seconds=max(settings.datastore_lock_seconds, 24 * 3600.0))
    store = LocalDatastore(settings.datastore_dir, limits) if settings.datastore_url is None else \
        _dicomweb_datastore(settings, limits)
    return DatastoreService(store, settings.tmp_dir, settings.decode_limits, settings.result_gzip_level)


def _dicomweb_datastore(settings: Settings, limits: DatastoreLimits) -> LocalDatastore:
    from aiaa_server.datastore.dicomweb import DicomWebDatastore, DicomWebOptions

    assert settings.datastore_url is not None
    token = settings.dicomweb_token.get_secret_value() if settings.dicomweb_token else None
    cache_bytes = settings.dicomweb_cache_mb * 2**20
    options = DicomWebOptions(max_cache_bytes=cache_bytes, max_series_bytes=min(2 << 30, cache_bytes))
    return DicomWebDatastore(settings.datastore_url, settings.datastore_dir, limits, options=options, token=token,
                             decode_limits=settings.decode_limits)


def _training(settings: Settings, registry: ModelRegistry, datastore: DatastoreService) -> TrainingService:
    limits = TrainingLimits(threads=settings.training_threads, memory_bytes=settings.training_memory_mb * 2**20,
                            max_queue=settings.training_max_queue)
    uploads = () if settings.allow_uploaded_code else (settings.workspace_models_dir,)
    return TrainingService(registry, datastore, ModelVersions(settings.workspace_models_dir), settings.training_dir,
                           limits, untrusted=uploads, device=settings.device)


def _training_metrics(metrics: MetricsRegistry, training: TrainingService) -> None:
    metrics.gauge("aiaa_training_jobs", "Training jobs kept in memory, by state", ["state"],
                  function=lambda: [((state,), count) for state, count in training.gauges()["states"].items()])
    metrics.gauge("aiaa_training_epoch", "Epochs done by the running (or last) training job", ["model"],
                  function=lambda: [((model,), value) for model, value in training.gauges()["epoch"].items()])
    metrics.gauge("aiaa_training_validation_dice",
                  "Validation Dice of the running (or last) job: serving weights and best candidate", ["model", "weights"],
                  function=lambda: list(training.gauges()["dice"].items()))


def _uncertainty_metrics(metrics: MetricsRegistry, scorer: UncertaintyScorer) -> None:
    metrics.gauge("aiaa_uncertainty_scored_images",
                  "Unlabelled datastore images with an uncertainty score kept", (),
                  function=lambda: [((), float(scorer.kept))])
    metrics.gauge("aiaa_uncertainty_scorings", "Images scored for uncertainty since the start", (),
                  function=lambda: [((), float(scorer.scored))])
    metrics.gauge("aiaa_uncertainty_refreshes", "Times every uncertainty score was dropped for new weights", (),
                  function=lambda: [((), float(scorer.refreshes))])


def _session_store(settings: Settings) -> SessionStore:
    return SessionStore(
        settings.sessions_dir,
        default_expiry=settings.session_expiry,
        budget_bytes=settings.session_budget_mb * 2**20,
        cache_bytes=settings.session_cache_mb * 2**20,
        gzip_level=settings.result_gzip_level,
        backend=session_backend(settings.session_store, settings.sessions_dir),
        limits=settings.decode_limits,
    )
