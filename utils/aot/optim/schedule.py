"""dlight schedule rules that 0202 tries before 0201's McuNoWorkspace rule."""


def optim_schedule_rules():
    """Rules tried in order on every PrimFunc TVM legalized (the fp32 path); a rule that
    returns None leaves the function to the next one."""
    return []
