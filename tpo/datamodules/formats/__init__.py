"""Readers (and, where the synthetic generator writes the format, writers) of public datasets.

One module per format; each has ``read(path, ...) -> list[<Sample>]`` of the records in
:mod:`tpo.datamodules.samples`, in boundary units (seconds, absolute pixels).
"""

from tpo.datamodules.formats import (
    activitynet,
    charades_sta,
    davis,
    got10k,
    lasot,
    llava,
    mevis,
    qvhighlights,
    refcoco,
    refytvos,
)

__all__ = ["activitynet", "charades_sta", "davis", "got10k", "lasot", "llava", "mevis",
           "qvhighlights", "refcoco", "refytvos"]
