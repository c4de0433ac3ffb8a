"""The engine: the one API of the product. ``Engine`` owns the workspace, the loaded models and the background
training job; the CLI and the app are thin adapters over it. Also here: the workspace layout (workspace), the one
training job at a time of the app (jobs) and uploaded files (uploads)."""

from core.engine.engine import DEMO_EVAL, DEMO_INDEX, DEMO_RUN, Engine
from core.engine.jobs import JobState, TrainingJobs
from core.engine.workspace import Workspace, default_workspace

__all__ = ["DEMO_EVAL", "DEMO_INDEX", "DEMO_RUN", "Engine", "JobState", "TrainingJobs", "Workspace",
           "default_workspace"]
