"""MkDocs hooks: the reference pages generated from the code at every build.

``reference/hpostudy.md`` comes from the spec model (:mod:`spec_reference`) and
``reference/cli.md`` from the ``kubetune`` command's parser (:mod:`cli_reference`); the Task API
page is mkdocstrings' (``::: trial_runner.task`` in ``docs/reference/task-api.md``). Nothing
generated is written into ``docs/``.
"""

from __future__ import annotations

from typing import Any

import cli_reference
import spec_reference
from mkdocs.structure.files import File, Files

GENERATED = {
    "reference/hpostudy.md": spec_reference.reference_markdown,
    "reference/cli.md": cli_reference.reference_markdown,
}


def on_files(files: Files, config: Any, **_: Any) -> Files:
    for uri, generate in GENERATED.items():
        files.append(File.generated(config, uri, content=generate()))
    return files
