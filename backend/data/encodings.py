"""Which text encoding a dataset file is saved in: UTF-8, or the Windows-1252 / Latin-1 that Excel and older
Windows tools write ("CSV" rather than "CSV UTF-8").

A file is read as UTF-8 while every line decodes as UTF-8. At the first line that does not, and when no earlier
line held UTF-8 text beyond ASCII, the file is taken to be Windows-1252 (named Latin-1 when it has none of the
bytes 0x80-0x9F, where the two differ) and read on in it, with a notice naming the encoding. A byte Windows-1252
leaves undefined, a control character, or a file that mixes UTF-8 and legacy lines is still refused, by line:
guessing there would train on garbled text.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

UTF8 = "utf-8"
CP1252 = "cp1252"
LATIN1 = "latin-1"
TITLES = {UTF8: "UTF-8", CP1252: "Windows-1252", LATIN1: "Latin-1 (ISO-8859-1)"}
# Control characters other than tab, newline, carriage return and form feed mean binary data, not text.
_CONTROL = {chr(c) for c in range(32) if chr(c) not in "\t\n\r\f"} | {"\x7f"}


class Undecodable(ValueError):
    """A line no supported encoding reads; the message is the sentence's tail (after 'line N: ')."""


@dataclass
class Decoder:
    """Decodes a file line by line, choosing the encoding as it goes (see the module's docstring)."""
    encoding: str = UTF8
    saw_utf8_text: bool = False          # a line held UTF-8 beyond ASCII: the file is UTF-8
    high_bytes: set = field(default_factory=set)  # 0x80-0x9F bytes seen in legacy lines (cp1252 vs latin-1)

    def decode(self, raw: bytes) -> str:
        """The line as text; raises Undecodable with the reason."""
        if self.encoding == UTF8:
            try:
                text = raw.decode(UTF8)
            except UnicodeDecodeError as e:
                if self.saw_utf8_text:
                    raise Undecodable(f"has bytes that are not UTF-8 text (byte {e.start + 1} of the line), in a "
                                      "file whose earlier lines are UTF-8. Re-save the file with UTF-8 "
                                      "encoding.") from None
                text = self._legacy(raw)
                self.encoding = CP1252
                return text
            if not text.isascii():
                self.saw_utf8_text = True
            return text
        try:
            text = raw.decode(UTF8)
        except UnicodeDecodeError:
            return self._legacy(raw)
        if not text.isascii():
            raise Undecodable("is UTF-8 text, but earlier lines of the file are Windows-1252: the file mixes two "
                              "encodings. Re-save it with one encoding (UTF-8).")
        return text

    def _legacy(self, raw: bytes) -> str:
        try:
            text = raw.decode(CP1252)
        except UnicodeDecodeError as e:
            raise Undecodable(f"has byte 0x{raw[e.start]:02X} (byte {e.start + 1} of the line), which is neither "
                              "UTF-8 nor Windows-1252 text. Re-save the file with UTF-8 encoding.") from None
        bad = next((i for i, ch in enumerate(text) if ch in _CONTROL), None)
        if bad is not None:
            raise Undecodable(f"has the control byte 0x{raw[bad]:02X} (byte {bad + 1} of the line): this is not "
                              "a text file. Re-save it as UTF-8 text.")
        self.high_bytes.update(b for b in raw if 0x80 <= b <= 0x9F)
        return text

    @property
    def name(self) -> str:
        """'utf-8', 'cp1252' or 'latin-1' (legacy without any byte where those two differ)."""
        if self.encoding == UTF8:
            return UTF8
        return CP1252 if self.high_bytes else LATIN1

    def notice(self, path: str) -> Optional[str]:
        """The sentence telling the user the file was not UTF-8, or None."""
        if self.encoding == UTF8:
            return None
        return (f"{path} is not UTF-8: it was read as {TITLES[self.name]} text (as Excel saves 'CSV' files). "
                "Check that accented letters look right; re-save it as UTF-8 to silence this notice.")
