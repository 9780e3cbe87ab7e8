"""Which heads to perturb, as users write them: a spec ('12:3,12:7', '12:*') or a heads JSON file.

The spec grammar and the JSON shapes are HeadSet's (models.attention_guidance); this adds the files.
"""

from __future__ import annotations

import json
from pathlib import Path

from models.attention_guidance import AttentionLayout, HeadSet
from models.errors import HeadsplatError


def load_heads(spec: str) -> HeadSet:
    """A head spec ('12:3,12:7', '12:*') or the path of a JSON heads file (e.g. a search's output)."""
    if spec.endswith(".json") or Path(spec).is_file():
        try:
            records = json.loads(Path(spec).read_text())
        except OSError as err:
            raise HeadsplatError(f"cannot read heads file {spec}: {err.strerror}") from err
        except json.JSONDecodeError as err:
            raise HeadsplatError(
                f"heads file {spec} is not valid JSON ({err.msg}, line {err.lineno})"
            ) from err
        return HeadSet.from_records(records)
    return HeadSet.parse(spec)


def head_list(spec: str, layout: AttentionLayout) -> list[tuple[int, int]]:
    """Every (layer, head) a spec names, wildcards expanded, in layer then head order ('': all heads)."""
    if not spec:
        return layout.all_heads()
    return [(layer, head) for layer, heads in HeadSet.parse(spec).resolve(layout).items() for head in heads]
