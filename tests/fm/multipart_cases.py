"""Upload bodies read by Werkzeug itself, as rule test cases for `flexgate config test`.

Generates multipart/form-data bodies for FlexMeasures' upload route in the many
spellings Werkzeug 3 accepts (line breaks, blanks after the delimiter, header
continuations, RFC 2231 names and continuations, backslash escapes, ISO-8859-1
escapes, preambles, overlapping delimiters, several Content-Disposition headers,
media types in any case, headers across Werkzeug's 64 KiB read chunks, a first
delimiter Werkzeug misses at a chunk's edge), has Werkzeug's
own request object read each one as Flask does, and prints a suite (TOML) on stdout:
every body in which Werkzeug finds a part header (a file name above all) that is not
plain text, as flexgate's `plain_text_multipart` means it, must be denied by the
preset, and every body without markup anywhere that Werkzeug reads as a plain upload
must be allowed.

    python multipart_cases.py --seed 1 --count 600 > cases.toml
"""

import argparse
import io
import json
import random
import sys
import unicodedata

from werkzeug.http import parse_options_header
from werkzeug.wrappers import Request

SENSOR = 1
BOUNDARY = "fg-b0undary"

MARKUP_NAMES = [
    'filename="<img src=x onerror=alert(1)>.csv"',
    'filename=" <b>.csv"',
    "filename*=UTF-8''%3Cimg%20src%3Dx%3E.csv",
    "filename*=utf-8''%3cb%3e.csv",
    "filename*=iso-8859-1''%3Cb%3E.csv",
    "filename*0*=UTF-8''%3Cb; filename*1=%3E.csv",
    "filename*0=\"<b\"; filename*1=\">.csv\"",
    'filename="a.csv"; filename="<b>.csv"',
    'FILENAME="<b>.csv"',
    'filename="\\<b\\>.csv"',
    'filename="<b>\\".csv"',
    # Made by Werkzeug's reading alone: an escape undone, pieces joined, bytes as
    # ISO-8859-1 (C1 controls), a line separator in UTF-8.
    'filename="$\\{7*7}.csv"',
    'filename*0="$"; filename*1="{7*7}.csv"',
    "filename*0*=utf-8''%24; filename*1*=%7B7*7%7D.csv",
    "filename*0*=UTF-8''a%24; name=\"x\"; filename*1*=%7Bx%7D.csv",
    "filename*=iso-8859-1''a%85.csv",
    "filename*0*=ISO-8859-1''a; filename*1*=%9B31m.csv",
    "filename*=utf-8''a%E2%80%A8b.csv",
    'filename="a`b`.csv"',
]
# Markup in a part header other than the file name: flexgate reads every one.
MARKUP_TYPES = [
    'text/csv; x="<b>"',
    "text/csv; x*0=\"$\"; x*1=\"{y}\"",
]
PLAIN_NAMES = [
    'filename="readings.csv"',
    'filename="meter (2026) o\'brien.csv"',
    "filename*=UTF-8''z%C3%A4hler.csv",
    'filename="a%20b.csv"',
    "filename=plain.csv",
    'filename*0="meter "; filename*1=readings.csv',
    "filename*=UTF-8''stra%C3%9Fe.csv",
    'filename="o\\"brien $ {x}.csv"',
    'filename*1="{x}.csv"; filename*0="$"',
]
BREAKS = ["\r\n", "\n", "\r"]


def toml_string(text: str) -> str:
    # JSON's escapes are TOML's, but for \u escapes of control characters, which
    # both share, and the solidus (JSON may leave it as is).
    return json.dumps(text, ensure_ascii=False)


def is_plain(text: str) -> bool:
    """flexgate's TextClass::Plain: no `${`, no `<>` or backtick, no line or paragraph
    separator, no control character but tab and line breaks."""
    return "${" not in text and not any(
        c in "<>`\u2028\u2029"
        or (unicodedata.category(c) == "Cc" and c not in "\t\r\n")
        for c in text
    )


def part(
    rng: random.Random, disposition: str, content: str, clean: bool, ctype: str = "text/csv"
) -> str:
    lb = rng.choice(BREAKS) if not clean else "\r\n"
    blanks = rng.choice(["", " ", "\t", " \t"]) if not clean else ""
    name = rng.choice(["Content-Disposition", "content-disposition", "CONTENT-DISPOSITION"])
    sep = rng.choice([": ", ":", " : ", ":\t"]) if not clean else ": "
    value = f'form-data; name="uploaded-files"; {disposition}'
    if not clean and rng.random() < 0.2:
        # A continuation line: Werkzeug joins it to the header before.
        value = value.replace("; filename", f";{lb} filename", 1)
    headers = [f"{name}{sep}{value}", f"Content-Type: {ctype}"]
    if not clean and rng.random() < 0.15:
        headers.insert(0, 'Content-Disposition: form-data; name="uploaded-files"; filename="x.csv"')
    if not clean and rng.random() < 0.1:
        headers.reverse()
    return f"--{BOUNDARY}{blanks}{lb}" + lb.join(headers) + lb + lb + content + lb


def hidden_part(rng: random.Random, evil: str) -> str:
    """A body whose first delimiter Werkzeug misses: followed by blanks, it straddles
    the edge of Werkzeug's first 64 KiB read, and Werkzeug then takes the delimiter
    inside a quoted header value for the first, and the next line, a continuation line
    to a reader that saw the first delimiter, for the part's first header."""
    blanks = 12
    edge = rng.randint(7, blanks - 1)
    pad = 65536 - edge - len(BOUNDARY) - 2
    return (
        "x" * pad
        + f"--{BOUNDARY}"
        + " " * blanks
        + f'\r\nX: y; k="--{BOUNDARY}\r\n Content-Disposition: form-data; name="uploaded-files"; {evil}\r\n'
        + "\r\nevent_start,event_value\r\n"
        + f"\r\n--{BOUNDARY}--\r\n"
    )


def body(rng: random.Random, markup: bool) -> tuple[str, str]:
    if markup and rng.random() < 0.02:
        return f"multipart/form-data; boundary={BOUNDARY}", hidden_part(
            rng, rng.choice(MARKUP_NAMES)
        )
    clean = not markup and rng.random() < 0.5
    csv = "event_start,event_value\r\n2026-11-30T00:00:00+01:00,1.5\r\n"
    parts = []
    n = rng.randint(1, 3)
    evil = rng.randrange(n) if markup else -1
    for i in range(n):
        if i == evil and rng.random() < 0.15:
            ctype = rng.choice(MARKUP_TYPES)
            parts.append(part(rng, rng.choice(PLAIN_NAMES), csv, clean, ctype))
            continue
        names = MARKUP_NAMES if i == evil else PLAIN_NAMES
        parts.append(part(rng, rng.choice(names), csv, clean))
    text = "".join(parts)
    if not clean and rng.random() < 0.3:
        text = rng.choice(["preamble\r\n", "x", "\r\n"]) + text
    if not clean and rng.random() < 0.2:
        # The first delimiter without its line break before the next one.
        text = text.replace(f"\r\n--{BOUNDARY}", f"--{BOUNDARY}", 1)
    text += f"--{BOUNDARY}--" + (rng.choice(BREAKS) if not clean else "\r\n")
    if not clean and rng.random() < 0.2:
        text += "epilogue <b>not read</b>\r\n"
    if rng.random() < 0.04:
        # Werkzeug reads the body 64 KiB at a time: a preamble that puts the last
        # part's delimiter or headers across a chunk's edge.
        last = text.rfind(f"--{BOUNDARY}\r", 0, len(text) - len(BOUNDARY) - 4)
        last = max(last, text.rfind(f"--{BOUNDARY}\n", 0, len(text) - len(BOUNDARY) - 4))
        edge = 65536 - rng.randint(-60, 60)
        pad = edge - max(last, 0)
        if pad > 2:
            text = "p" * (pad - 2) + "\r\n" + text
    ct = rng.choice(
        [
            f"multipart/form-data; boundary={BOUNDARY}",
            f'multipart/form-data; boundary="{BOUNDARY}"',
            f"Multipart/Form-Data;boundary={BOUNDARY}",
            f"multipart/form-data; charset=utf-8; boundary={BOUNDARY}",
        ]
    )
    return ct, text


def werkzeug_files(ct: str, text: str) -> list[tuple[str, list[str]]]:
    """The files Werkzeug's request object (Flask's) reads from the body: each file's
    name, and every value of its headers, those values' parameters included."""
    data = text.encode("utf-8")
    environ = {
        "REQUEST_METHOD": "POST",
        "CONTENT_TYPE": ct,
        "CONTENT_LENGTH": str(len(data)),
        "wsgi.input": io.BytesIO(data),
    }
    files = []
    for _, f in Request(environ).files.items(multi=True):
        values = []
        for _, value in f.headers.items():
            values.append(value)
            values.extend(parse_options_header(value)[1].values())
        files.append((f.filename or "", values))
    return files


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--count", type=int, default=600)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    out = [
        "[principals.member]",
        "user_id = 10",
        "account_id = 1",
        "",
        "[owners.sensor]",
        f"{SENSOR} = {{ account_id = 1 }}",
        "",
    ]
    denied = allowed = 0
    for i in range(args.count):
        markup = i % 3 != 0
        ct, text = body(rng, markup)
        files = werkzeug_files(ct, text)
        names = [name for name, _ in files]
        if any(not is_plain(v) for name, values in files for v in [name, *values]):
            expect = 'decision = "deny"'
            denied += 1
        elif not markup and names and "<" not in text and "%3" not in text.lower():
            expect = "status = 200"
            allowed += 1
        else:
            continue
        out += [
            "[[case]]",
            f"name = {toml_string(f'werkzeug case {i}: files named ' + ', '.join(names))}",
            'who = "member"',
            'method = "POST"',
            f'path = "/api/v3_0/sensors/{SENSOR}/data/upload"',
            f"headers = {{ content-type = {toml_string(ct)} }}",
            f"text = {toml_string(text)}",
            expect,
            "",
        ]
    sys.stdout.write("\n".join(out))
    print(f"{denied} to deny, {allowed} to allow", file=sys.stderr)


if __name__ == "__main__":
    main()
