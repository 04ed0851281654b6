#!/usr/bin/env python3
"""Rewrite a copy of provider/src/resources/backup.rs so that localdr_backup serves a smaller
schema, for bench/provider_schema_cost.sh only (never for a build anyone uses).

Why: Terraform's own per-resource work in a plan (rebuilding the schema's implied type about
14 times per resource, walking, marking, JSON-encoding and decoding every attribute) grows
with the number of attributes a schema declares, set or not. The variants let the bench show
how much of the provider-overhead ratio is the schema in ../shared/design/resources.md and how
much is the provider.

Each dropped attribute disappears from the schema and its state field is skipped by serde,
so the provider never sends it; nothing else changes (the bench configuration sets none of
them). Usage: schema_variant.py VARIANT path/to/backup.rs  (edits the file in place).
"""
import re
import sys

BLOCKS = ["retention", "copy", "postgres"]
OPTIONAL_STRINGS = [
    "tfstate", "schedule", "schedule_timezone", "start_window", "rpo", "rto", "triggers",
    "delete_snapshots_on_destroy",
]
VARIANTS = {
    # the three nested blocks (21 nested attributes) gone; the 20 top-level attributes kept
    "no-blocks": (BLOCKS, []),
    # also the 8 optional top-level attributes the bench does not set: 12 attributes left
    "top12": (BLOCKS, OPTIONAL_STRINGS),
}


def die(msg):
    sys.exit(f"schema_variant.py: {msg} (has backup.rs changed shape?)")


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in VARIANTS:
        die(f"usage: schema_variant.py {{{'|'.join(VARIANTS)}}} backup.rs")
    blocks, attrs = VARIANTS[sys.argv[1]]
    path = sys.argv[2]
    src = open(path).read()

    # 1. The state struct: skip the dropped fields.
    start = src.find("pub struct BackupState {")
    end = src.find("\n}", start)
    if start < 0 or end < 0:
        die("no `pub struct BackupState`")
    body = src[start:end]
    for field in blocks + attrs:
        body, n = re.subn(
            r'\n    (?:#\[serde\(with = "value::serde_as_vec"\)\]\n    )?pub %s:' % field,
            "\n    #[serde(skip)]\n    pub %s:" % field,
            body,
        )
        if n != 1:
            die(f"state field `{field}` found {n} times")
    src = src[:start] + body + src[end:]

    # 2. The resource schema: the top-level attribute lines and block entries.
    start = src.find('"snapshots" => number(Computed')
    if start < 0:
        die("no `snapshots` attribute in the schema")
    top = src.rfind("attributes: map! {", 0, start)
    top_end = src.find("},", start)
    blocks_at = src.find("blocks: map! {", top_end)
    blocks_end = src.find("},", blocks_at)
    if min(top, top_end, blocks_at, blocks_end) < 0:
        die("no top-level attributes/blocks maps")

    def drop(text, names):
        key = re.compile(r'\s*"([a-z_]+)" =>')
        for name in names:
            found = sum(1 for line in text.split("\n") if (m := key.match(line)) and m.group(1) == name)
            if found != 1:
                die(f"schema entry `{name}` found {found} times")
        text = "\n".join(
            line for line in text.split("\n")
            if not ((m := key.match(line)) and m.group(1) in names)
        )
        # No comma may be left before a map's closing brace (map! takes none when empty).
        return re.sub(r",(\s*)$", r"\1", text)

    src = (src[:top] + drop(src[top:top_end], attrs) + src[top_end:blocks_at]
           + drop(src[blocks_at:blocks_end], blocks) + src[blocks_end:])
    open(path, "w").write(src)


if __name__ == "__main__":
    main()
