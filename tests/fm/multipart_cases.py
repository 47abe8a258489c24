"""Upload bodies read by Werkzeug itself, as rule test cases for `flexgate config test`.

Generates multipart/form-data bodies for FlexMeasures' upload route in the many
spellings Werkzeug 3 accepts (line breaks, blanks after the delimiter, header
continuations, RFC 2231 names, preambles, overlapping delimiters, several
Content-Disposition headers), has Werkzeug's own form parser read each one, and prints
a suite (TOML) on stdout: every body in which Werkzeug finds a file name holding `<`
or `>` must be denied by the preset, and every body without markup anywhere that
Werkzeug reads as a plain upload must be allowed.

    python multipart_cases.py --seed 1 --count 600 > cases.toml
"""

import argparse
import io
import json
import random
import sys

from werkzeug.formparser import parse_form_data

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
]
PLAIN_NAMES = [
    'filename="readings.csv"',
    'filename="meter (2026) o\'brien.csv"',
    "filename*=UTF-8''z%C3%A4hler.csv",
    'filename="a%20b.csv"',
    "filename=plain.csv",
]
BREAKS = ["\r\n", "\n", "\r"]


def toml_string(text: str) -> str:
    # JSON's escapes are TOML's, but for \u escapes of control characters, which
    # both share, and the solidus (JSON may leave it as is).
    return json.dumps(text, ensure_ascii=False)


def part(rng: random.Random, disposition: str, content: str, clean: bool) -> str:
    lb = rng.choice(BREAKS) if not clean else "\r\n"
    blanks = rng.choice(["", " ", "\t", " \t"]) if not clean else ""
    name = rng.choice(["Content-Disposition", "content-disposition", "CONTENT-DISPOSITION"])
    sep = rng.choice([": ", ":", " : ", ":\t"]) if not clean else ": "
    value = f'form-data; name="uploaded-files"; {disposition}'
    if not clean and rng.random() < 0.2:
        # A continuation line: Werkzeug joins it to the header before.
        value = value.replace("; filename", f";{lb} filename", 1)
    headers = [f"{name}{sep}{value}", "Content-Type: text/csv"]
    if not clean and rng.random() < 0.15:
        headers.insert(0, 'Content-Disposition: form-data; name="uploaded-files"; filename="x.csv"')
    if not clean and rng.random() < 0.1:
        headers.reverse()
    return f"--{BOUNDARY}{blanks}{lb}" + lb.join(headers) + lb + lb + content + lb


def body(rng: random.Random, markup: bool) -> tuple[str, str]:
    clean = not markup and rng.random() < 0.5
    csv = "event_start,event_value\r\n2026-11-30T00:00:00+01:00,1.5\r\n"
    parts = []
    n = rng.randint(1, 3)
    evil = rng.randrange(n) if markup else -1
    for i in range(n):
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
    ct = rng.choice(
        [
            f"multipart/form-data; boundary={BOUNDARY}",
            f'multipart/form-data; boundary="{BOUNDARY}"',
            f"Multipart/Form-Data;boundary={BOUNDARY}",
            f"multipart/form-data; charset=utf-8; boundary={BOUNDARY}",
        ]
    )
    return ct, text


def werkzeug_names(ct: str, text: str) -> list[str] | None:
    data = text.encode("utf-8")
    environ = {
        "REQUEST_METHOD": "POST",
        "CONTENT_TYPE": ct,
        "CONTENT_LENGTH": str(len(data)),
        "wsgi.input": io.BytesIO(data),
    }
    try:
        _, _, files = parse_form_data(environ, silent=False)
    except Exception:
        return None
    return [f.filename or "" for _, f in files.items(multi=True)]


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
        names = werkzeug_names(ct, text)
        if names is None:
            continue
        if any("<" in n or ">" in n for n in names):
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
