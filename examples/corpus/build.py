"""Rebuild the generated files of the example corpus (they are committed; run this only to change them).

    python examples/corpus/build.py

Generates, next to the hand-written documents:
- docs/en/brewing-guide.docx          (python-docx)
- docs/en/quality-lab.pdf             (a minimal PDF written by hand: Helvetica text)
- docs/zh/quality-lab.pdf             (the same in Chinese: Adobe's STSong-Light CID font, UniGB-UCS2-H)
- docs/zh/pests.gb18030.txt           (GB18030-encoded Chinese text)
- docs/zh/contacts.gbk.txt            (GBK-encoded Chinese text with planted personal data)
- docs/mirror/withering-copy.md       (exact duplicate of docs/en/withering.md)
- docs/mirror/planting-windows.txt    (docs/en/planting.txt with CRLF line ends, trailing spaces and
                                       full-width letters: identical after normalisation)
- docs/noise/garbage.txt              (random bytes with a text extension)
- docs/noise/corrupt.pdf              (a PDF header followed by garbage)
- docs/noise/empty.txt                (zero bytes)
Only the standard library and python-docx are needed.
"""

from __future__ import annotations

import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOCS = HERE / "docs"

PESTS_ZH = """病虫害防治

琥珀螨是奥瑞兰高山茶最主要的害虫。它在嫩叶背面取食，受害叶片会变成古铜色并卷曲。茶农每周在每个片区检查二十片叶子上的螨虫数量。

当每片叶子上的琥珀螨超过五只时，应在清晨喷洒印楝油，每亩用量为一百二十毫升。清晨螨虫活动最少，蜜蜂也尚未出巢。

霜蛾常见于海拔一千八百米以上的梯田，其幼虫在早春啃食米斯特拉芽的嫩芽。防治方法是设置性信息素诱捕器，每公顷十二个，每三天检查一次。

灰疱病多发于雨季。应摘除并烧毁病叶，同时疏剪遮荫树冠，保持茶丛通风。山谷内禁止使用铜制杀菌剂。

本资料由奥瑞兰茶叶研究所编制，仅供内部培训使用。
"""

CONTACTS_ZH = """茶园登记与联系方式

新茶园登记时，需要向奥瑞兰茶叶研究所提交茶园位置图、品种清单和负责人信息。研究所会在三十天内安排实地核查，核查通过后发放登记编号。

登记负责人王丽，手机号码13812345678，电子邮箱wang.li@atri.example。研究所值班电话为+86 139 1234 5678，采摘季节每天早上六点开始接听。

负责人身份证号码为11010519491231002X，仅用于登记核验。登记资料中填写的编号110105194912310021有误，已退回更正。

茶园登记编号每年复核一次，未通过复核的茶园不得使用维拉谷原产地保护标志。
"""

LAB_EN = [
    "ATRI Quality Laboratory: test methods",
    "",
    "Every lot submitted for the Veyra Valley Protected Origin seal is tested in the ATRI",
    "laboratory in Oradell. The grower sends three samples of 50 grams each.",
    "",
    "Theanine is measured by HPLC. Silverleaf-7 green tea must contain at least 2.1 percent",
    "theanine by dry weight. Caffeine in Copper Crown black tea is typically 3.2 percent.",
    "",
    "Moisture is measured by oven drying at 103 degrees Celsius; a lot with more than",
    "3 percent moisture fails. Pesticide residues are screened for 180 compounds.",
    "",
    "Results are sent to the grower within ten working days and entered in the public register.",
]

LAB_ZH = [
    "奥瑞兰茶叶研究所质量检测方法",
    "",
    "申请维拉谷原产地保护标志的每一批茶叶，都要送到奥拉德尔的实验室检测。",
    "茶农需提交三份样品，每份五十克。",
    "",
    "茶氨酸含量采用高效液相色谱法测定。银叶7号绿茶的茶氨酸含量不得低于干重的百分之二点一。",
    "含水量超过百分之三的批次判定为不合格。",
    "",
    "检测结果在十个工作日内通知茶农，并登记在公开名录中。",
]


def pdf_bytes(lines: list[str], chinese: bool = False) -> bytes:
    """A one-page PDF with the given lines of text (no external library)."""
    if chinese:
        def encode(line: str) -> bytes:
            return b"<" + line.encode("utf-16-be").hex().upper().encode() + b">"
        font = (
            b"<< /Type /Font /Subtype /Type0 /BaseFont /STSong-Light /Encoding /UniGB-UCS2-H "
            b"/DescendantFonts [6 0 R] >>"
        )
        size = 12
    else:
        def encode(line: str) -> bytes:
            escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            return b"(" + escaped.encode("latin-1") + b")"
        font = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
        size = 10
    content = [b"BT", f"/F1 {size} Tf".encode(), f"{size + 6} TL".encode(), b"60 780 Td"]
    for line in lines:
        content.append(encode(line) + b" Tj T*" if line else b"T*")
    content.append(b"ET")
    stream = b"\n".join(content)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        font,
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
    ]
    if chinese:
        objects.append(
            b"<< /Type /Font /Subtype /CIDFontType0 /BaseFont /STSong-Light "
            b"/CIDSystemInfo << /Registry (Adobe) /Ordering (GB1) /Supplement 4 >> /FontDescriptor 7 0 R >>"
        )
        objects.append(
            b"<< /Type /FontDescriptor /FontName /STSong-Light /Flags 6 /FontBBox [-25 -254 1000 880] "
            b"/ItalicAngle 0 /Ascent 880 /Descent -120 /CapHeight 880 /StemV 93 >>"
        )
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def build_docx(path: Path) -> None:
    import docx

    document = docx.Document()
    document.add_heading("Brewing Aurelian Tea", level=0)
    document.add_paragraph(
        "This guide gives the brewing parameters recommended by ATRI for the two main teas of the "
        "Veyra Valley. Use soft, freshly boiled water that has cooled to the right temperature."
    )
    document.add_heading("Silverleaf-7 green tea", level=1)
    document.add_paragraph(
        "Brew Silverleaf-7 green tea with water at 80 °C, using 3 grams of leaf for 150 millilitres of "
        "water, for 2 minutes. A second infusion can steep for 3 minutes."
    )
    document.add_heading("Copper Crown black tea", level=1)
    document.add_paragraph(
        "Brew Copper Crown black tea with water at 95 °C, using 4 grams of leaf for 200 millilitres of "
        "water, for 4 minutes. A little milk suits it; sugar is not recommended."
    )
    table = document.add_table(rows=3, cols=3)
    for row, values in zip(table.rows, [
        ("Cup", "Colour", "Aroma"),
        ("Silverleaf-7", "pale jade", "cut grass, sweet pea"),
        ("Copper Crown", "bright amber", "malt, dried apricot"),
    ]):
        for cell, value in zip(row.cells, values):
            cell.text = value
    document.core_properties.author = "ATRI"
    document.save(path)


def main() -> None:
    (DOCS / "mirror").mkdir(parents=True, exist_ok=True)
    build_docx(DOCS / "en" / "brewing-guide.docx")
    (DOCS / "en" / "quality-lab.pdf").write_bytes(pdf_bytes(LAB_EN))
    (DOCS / "zh" / "quality-lab.pdf").write_bytes(pdf_bytes(LAB_ZH, chinese=True))
    (DOCS / "zh" / "pests.gb18030.txt").write_bytes(PESTS_ZH.encode("gb18030"))
    (DOCS / "zh" / "contacts.gbk.txt").write_bytes(CONTACTS_ZH.encode("gbk"))

    withering = (DOCS / "en" / "withering.md").read_bytes()
    (DOCS / "mirror" / "withering-copy.md").write_bytes(withering)

    planting = (DOCS / "en" / "planting.txt").read_text(encoding="utf-8")
    variant = planting.replace("Planting a new Aurelian tea garden", "Ｐｌａｎｔｉｎｇ a new Aurelian tea garden")
    variant = "\r\n".join(line + "  " for line in variant.split("\n"))
    (DOCS / "mirror" / "planting-windows.txt").write_bytes(variant.encode("utf-8"))

    rng = random.Random(20240601)
    (DOCS / "noise" / "garbage.txt").write_bytes(bytes(rng.randrange(256) for _ in range(3000)))
    (DOCS / "noise" / "corrupt.pdf").write_bytes(
        b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R" + bytes(rng.randrange(256) for _ in range(600))
    )
    (DOCS / "noise" / "empty.txt").write_bytes(b"")


if __name__ == "__main__":
    main()
