"""Planner: candidate plans, filtered by the estimator, ranked by a visible step-time model."""

from .search import Candidate, Constraints, SearchResult, search, smallest_cluster_without_offload
from .throughput import Network, StepTime, step_time

__all__ = ["Candidate", "Constraints", "Network", "SearchResult", "StepTime", "search",
           "smallest_cluster_without_offload", "step_time"]
