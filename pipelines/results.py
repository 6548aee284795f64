"""Where a cached stage's result is kept: a pickle file of its own beside Prefect's record.

Prefect's own pickle serializer base64-encodes the pickle and Prefect embeds it in the JSON
of its result record, so a large frame was held in memory several times over while it was
written (a million rows of a 20-column table: the ingest stage peaked at 2.7 GB, against
0.9 GB for the same work without persisting). Here the result is pickled straight into its
own file and the record holds only that file's name; reading it back is `pickle.load`.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Literal

import cloudpickle
from prefect.serializers import Serializer

from loopline.offline.datastore import atomic_write


class PickleFile(Serializer):
    """Pickles each result into a file of its own under `folder`."""

    type: Literal["loopline-pickle-file"] = "loopline-pickle-file"
    folder: str

    def dumps(self, obj: Any) -> bytes:
        name = f"{uuid.uuid4().hex}.pickle"

        def write(path: Path) -> None:
            with path.open("wb") as handle:
                cloudpickle.dump(obj, handle)

        atomic_write(Path(self.folder) / name, write)
        return name.encode()

    def loads(self, blob: bytes) -> Any:
        with (Path(self.folder) / blob.decode()).open("rb") as handle:
            return cloudpickle.load(handle)
