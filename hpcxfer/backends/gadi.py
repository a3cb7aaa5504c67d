from hpcxfer.backends.scheduler import SchedulerBackend


class GadiBackend(SchedulerBackend):
    name = "gadi"
