"""Patient identities for synthetic studies: names in the site's script, IDs, dates.

Names follow PS3.5 §6.2.1 (Person Name): ``Family^Given``, with the ideographic and phonetic
component groups (``=``) for Chinese and Japanese, e.g. ``Wang^Wei=王^伟`` and
``Yamada^Tarou=山田^太郎=やまだ^たろう``.  They are encoded by pydicom in the site's Specific
Character Set (0008,0005): ISO_IR 100, ISO_IR 192 (UTF-8), GB18030, ISO 2022 IR 87, ...
All are invented; any likeness to a real person is chance.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

# (alphabetic family, ideographic family[, phonetic]) / (given, ideographic[, phonetic], sex)
_CHINESE_FAMILY = [("Wang", "王"), ("Li", "李"), ("Zhang", "张"), ("Liu", "刘"), ("Chen", "陈"),
                   ("Yang", "杨"), ("Huang", "黄"), ("Zhao", "赵"), ("Wu", "吴"), ("Zhou", "周")]
_CHINESE_GIVEN = [("Wei", "伟", "M"), ("Fang", "芳", "F"), ("Na", "娜", "F"), ("Min", "敏", "F"),
                  ("Jing", "静", "F"), ("Qiang", "强", "M"), ("Lei", "磊", "M"), ("Jun", "军", "M"),
                  ("XiuYing", "秀英", "F"), ("XiaoDong", "小东", "M"), ("Tao", "涛", "M"),
                  ("Yan", "艳", "F")]
_JAPANESE_FAMILY = [("Yamada", "山田", "やまだ"), ("Tanaka", "田中", "たなか"),
                    ("Sato", "佐藤", "さとう"), ("Suzuki", "鈴木", "すずき"),
                    ("Takahashi", "高橋", "たかはし"), ("Watanabe", "渡辺", "わたなべ")]
_JAPANESE_GIVEN = [("Tarou", "太郎", "たろう", "M"), ("Hanako", "花子", "はなこ", "F"),
                   ("Kenichi", "健一", "けんいち", "M"), ("Misaki", "美咲", "みさき", "F"),
                   ("Shouta", "翔太", "しょうた", "M"), ("Yumi", "由美", "ゆみ", "F")]
_LATIN_FAMILY = ["Müller", "Schäfer", "Weiß", "Köhler", "Böhm", "Jürgensen", "Hoffmann",
                 "Fischer", "Lefèvre", "Núñez", "Sørensen", "Groß"]
_LATIN_GIVEN = [("Jürgen", "M"), ("Günther", "M"), ("Käthe", "F"), ("Björn", "M"),
                ("Renée", "F"), ("José", "M"), ("François", "M"), ("Zoë", "F"), ("Anja", "F"),
                ("Sören", "M"), ("Inés", "F"), ("Agnès", "F")]
_CYRILLIC = [("Иванов", "Сергей", "M"), ("Петрова", "Анна", "F"), ("Смирнов", "Дмитрий", "M"),
             ("Кузнецова", "Ольга", "F"), ("Попов", "Алексей", "M"), ("Соколова", "Елена", "F")]
_GREEK = [("Παπαδόπουλος", "Γιώργος", "M"), ("Νικολάου", "Μαρία", "F"),
          ("Οικονόμου", "Δημήτρης", "M"), ("Γεωργίου", "Ελένη", "F")]


@dataclass(frozen=True)
class PatientInfo:
    name: str
    patient_id: str
    birth_date: str
    sex: str
    age: str
    weight_kg: float
    height_m: float


@dataclass(frozen=True)
class StudyInfo:
    date: str
    time: str
    accession: str
    study_id: str
    referring: str


def person_name(rng: np.random.Generator, script: str) -> tuple[str, str]:
    """A (PN value, sex) pair written in ``script``."""
    if script == "chinese":
        fam = _CHINESE_FAMILY[rng.integers(len(_CHINESE_FAMILY))]
        giv = _CHINESE_GIVEN[rng.integers(len(_CHINESE_GIVEN))]
        return f"{fam[0]}^{giv[0]}={fam[1]}^{giv[1]}", giv[2]
    if script == "japanese":
        fam = _JAPANESE_FAMILY[rng.integers(len(_JAPANESE_FAMILY))]
        giv = _JAPANESE_GIVEN[rng.integers(len(_JAPANESE_GIVEN))]
        return f"{fam[0]}^{giv[0]}={fam[1]}^{giv[1]}={fam[2]}^{giv[2]}", giv[3]
    if script == "cyrillic":
        f, g, sex = _CYRILLIC[rng.integers(len(_CYRILLIC))]
        return f"{f}^{g}", sex
    if script == "greek":
        f, g, sex = _GREEK[rng.integers(len(_GREEK))]
        return f"{f}^{g}", sex
    fam = _LATIN_FAMILY[rng.integers(len(_LATIN_FAMILY))]
    giv = _LATIN_GIVEN[rng.integers(len(_LATIN_GIVEN))]
    return f"{fam}^{giv[0]}", giv[1]


def make_patient(rng: np.random.Generator, site_name: str, script: str, index: int,
                 study_date: dt.date) -> PatientInfo:
    name, sex = person_name(rng, script)
    age = int(rng.integers(40, 86))
    birth = study_date - dt.timedelta(days=int(age * 365.25 + rng.integers(0, 365)))
    height = float(np.round(rng.normal(1.76 if sex == "M" else 1.63, 0.07), 2))
    weight = float(np.round(rng.normal(24.5, 3.5) * height * height, 1))
    return PatientInfo(name=name, patient_id=f"SYN-{site_name.upper()[:8]}-{index:05d}",
                       birth_date=birth.strftime("%Y%m%d"), sex=sex, age=f"{age:03d}Y",
                       weight_kg=weight, height_m=height)


def make_study(rng: np.random.Generator, site_name: str, index: int,
               script: str) -> StudyInfo:
    day = dt.date(2024, 1, 1) + dt.timedelta(days=int(rng.integers(0, 730)))
    t = dt.time(int(rng.integers(7, 19)), int(rng.integers(0, 60)), int(rng.integers(0, 60)))
    referring = person_name(rng, script)[0] if rng.random() < 0.7 else ""
    return StudyInfo(date=day.strftime("%Y%m%d"), time=t.strftime("%H%M%S"),
                     accession=f"{site_name[:3].upper()}{day:%y}{int(rng.integers(1e5, 1e6))}",
                     study_id=str(index + 1), referring=referring)


def parse_date(value: str) -> dt.date:
    return dt.datetime.strptime(value, "%Y%m%d").date()
