from .scheduling_ddgan import DDGANScheduler, DDGANSchedulerOutput

__all__ = ["DDGANScheduler", "DDGANSchedulerOutput"]
