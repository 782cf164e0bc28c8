"""DICOM attribute matching (PS3.4 C.2.2.2) over the catalog, compiled to SQL.

The one matching engine behind every query door: the Query RPC (store.find), QIDO-RS and,
through the Query RPC, the receiver's C-FIND. `compile_query` turns a level and a list of
(key, value) pairs into a WHERE clause with psycopg parameters (values are never put into
the SQL text) plus the attributes to return; `compile_filter` compiles one key for the
list RPCs (store.queries). No I/O here.

What a value means (by the attribute's VR):
- "" or "*": universal matching (any value, also none); the attribute is returned.
- UI: one UID, or a list of UIDs separated by backslash (any of them).
- DA: YYYYMMDD, or a range "a-b", "-b", "a-" (inclusive). TM: HH[MM[SS[.F...]]], or a
  range of those; a bound of reduced precision covers its whole period ("10" ends at
  10:59:59.999999), a single value is the range of its own period.
- IS (SeriesNumber, InstanceNumber, the related counts): an integer, or a list of them.
- Text VRs (AE, CS, LO, SH, PN): exact (single value), or wildcards `*` (any run,
  also empty) and `?` (one character); a backslash list matches any of its values. Text
  is case-sensitive, except PN: person names match case-insensitively, against the whole
  stored name or any one of its component groups (alphabetic=ideographic=phonetic), so
  "Yamada^Tarou" and "山田^太郎" both find "Yamada^Tarou=山田^太郎=やまだ^たろう".
- Fuzzy matching (an option of the request; PN only): the value is split into words (at
  ^ = , and spaces); each word must be, ignoring case and accents (Unicode NFKD with
  combining marks removed, then lower case), the beginning of some word of the stored
  name, in any order. "jos gar" finds "GARCÍA^José"; "山田" finds "山田^太郎". A fuzzy
  value with wildcards is a wildcard match that ignores case and accents.
- A value that cannot match by its VR's syntax (a bad date, a malformed UID, a UID list
  longer than MAX_LIST_VALUES, more than MAX_ALTERNATIVES text/date/time alternatives or
  MAX_FUZZY_WORDS fuzzy words, a NUL character) is BadRequest naming the key.
Not supported: sequence matching, combined date-time matching (StudyDate with StudyTime
as one range), DT attributes (none is catalogued), multiple values inside a range.
Keys the catalog does not hold (or that belong to a lower level than the query's) are
not errors: they are reported back as `unsupported`, for QIDO's Warning header.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from seriesflow.store import request_fields
from seriesflow.store.attributes import resolve
from seriesflow.store.errors import BadRequest
from seriesflow.store.validation import is_uid, parse_date

# A list (UIDs, alternatives) longer than this is refused: a client enumerating the catalog
# by UID should page instead; 1000 keeps the SQL array small and the plan cheap.
MAX_LIST_VALUES: Final = 1000
# Alternatives that each become an SQL condition (text, dates, times), and words of a fuzzy
# name: bounded so a hostile value cannot make a statement of megabytes.
MAX_ALTERNATIVES: Final = 32
MAX_FUZZY_WORDS: Final = 16
# Keys given in one query; far above any real identifier (C-FIND identifiers hold tens).
MAX_KEYS: Final = 500
# Keys that steer a C-FIND but name no catalog data: accepted and not reported unsupported.
IGNORED_KEYS: Final = frozenset({"00080052", "00080005"})  # QueryRetrieveLevel, charset


class Level(enum.IntEnum):
    PATIENT = 1
    STUDY = 2
    SERIES = 3
    IMAGE = 4


@dataclass(frozen=True)
class Attribute:
    """One catalogued attribute: where it lives and how its value reads back."""

    keyword: str
    tag: str
    vr: str
    level: Level
    # SQL expression of the value, over the aliases p (patients), st (studies), s (series),
    # i (instances) and agg (a study's series aggregates).
    column: str
    # Free text with an index on catalog_key(column): exact matches go through it.
    indexed: bool = False
    # For DA: the text as received, returned when the date column is NULL (invalid date).
    raw: str = ""
    # PN with the name-search indexes of migrations/versions/0005 (see _name_prefilter).
    name_indexed: bool = False


def _a(keyword: str, tag: str, vr: str, level: Level, column: str, **kw: Any) -> Attribute:
    return Attribute(keyword, tag, vr, level, column, **kw)


P, ST, SE, IM = Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE
ATTRIBUTES: Final[tuple[Attribute, ...]] = (
    _a("PatientName", "00100010", "PN", P, "p.patient_name", name_indexed=True),
    _a("PatientID", "00100020", "LO", P, "p.patient_id", indexed=True),
    _a("IssuerOfPatientID", "00100021", "LO", P, "p.issuer_of_patient_id"),
    _a("PatientBirthDate", "00100030", "DA", P, "p.patient_birth_date",
       raw="p.patient_birth_date_raw"),
    _a("PatientSex", "00100040", "CS", P, "p.patient_sex"),
    _a("NumberOfPatientRelatedStudies", "00201200", "IS", P,
       "(SELECT count(*) FROM studies x WHERE x.patient_fk = p.id)"),
    _a("StudyInstanceUID", "0020000D", "UI", ST, "st.study_instance_uid"),
    _a("StudyDate", "00080020", "DA", ST, "st.study_date", raw="st.study_date_raw"),
    _a("StudyTime", "00080030", "TM", ST, "st.study_time"),
    _a("AccessionNumber", "00080050", "SH", ST, "st.accession_number", indexed=True),
    _a("StudyID", "00200010", "SH", ST, "st.study_id"),
    _a("StudyDescription", "00081030", "LO", ST, "st.study_description"),
    _a("ReferringPhysicianName", "00080090", "PN", ST, "st.referring_physician_name"),
    _a("ModalitiesInStudy", "00080061", "CS", ST, "agg.modalities"),
    _a("NumberOfStudyRelatedSeries", "00201206", "IS", ST, "agg.num_series"),
    _a("NumberOfStudyRelatedInstances", "00201208", "IS", ST, "agg.num_instances"),
    _a("SeriesInstanceUID", "0020000E", "UI", SE, "s.series_instance_uid"),
    _a("Modality", "00080060", "CS", SE, "s.modality", indexed=True),
    _a("SeriesNumber", "00200011", "IS", SE, "s.series_number"),
    _a("SeriesDescription", "0008103E", "LO", SE, "s.series_description"),
    _a("BodyPartExamined", "00180015", "CS", SE, "s.body_part_examined"),
    _a("SeriesDate", "00080021", "DA", SE, "s.series_date", raw="s.series_date_raw"),
    _a("SeriesTime", "00080031", "TM", SE, "s.series_time"),
    _a("ProtocolName", "00181030", "LO", SE, "s.protocol_name"),
    _a("Manufacturer", "00080070", "LO", SE, "s.manufacturer"),
    _a("ManufacturerModelName", "00081090", "LO", SE, "s.manufacturer_model_name"),
    _a("InstitutionName", "00080080", "LO", SE, "s.institution_name"),
    _a("StationName", "00081010", "SH", SE, "s.station_name"),
    _a("NumberOfSeriesRelatedInstances", "00201209", "IS", SE, "s.num_instances"),
    _a("SOPInstanceUID", "00080018", "UI", IM, "i.sop_instance_uid"),
    _a("SOPClassUID", "00080016", "UI", IM, "i.sop_class_uid"),
    _a("InstanceNumber", "00200013", "IS", IM, "i.instance_number"),
)  # fmt: skip
BY_TAG: Final = {a.tag: a for a in ATTRIBUTES}
# Aggregates over a level's children: only at their own level (a per-row subquery below it
# would cost a scan per instance for a number nobody asks of an instance).
_OWN_LEVEL_ONLY: Final = frozenset({"00201200", "00080061", "00201206", "00201208"})

# The attributes every match carries (PS3.18 Tables 10.6.3-3..5; PS3.4 C.6 unique and
# required keys), by keyword.
_REQUIRED: Final[dict[Level, tuple[str, ...]]] = {
    P: ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
        "NumberOfPatientRelatedStudies"),
    ST: ("StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
         "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate",
         "PatientSex", "StudyInstanceUID", "StudyID", "StudyDescription",
         "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"),
    SE: ("Modality", "SeriesDescription", "SeriesNumber", "SeriesInstanceUID",
         "NumberOfSeriesRelatedInstances", "SeriesDate", "SeriesTime", "BodyPartExamined",
         "StudyInstanceUID"),
    IM: ("SOPClassUID", "SOPInstanceUID", "InstanceNumber", "SeriesInstanceUID",
         "StudyInstanceUID"),
}  # fmt: skip
_BY_KEYWORD: Final = {a.keyword: a for a in ATTRIBUTES}
REQUIRED: Final[dict[Level, tuple[Attribute, ...]]] = {
    level: tuple(_BY_KEYWORD[k] for k in keys) for level, keys in _REQUIRED.items()
}

_TEXT_VRS: Final = frozenset({"AE", "CS", "LO", "SH", "PN", "LT", "ST", "UT", "UC"})
_LIKE_ESCAPE: Final = str.maketrans({"\\": "\\\\", "%": "\\%", "_": "\\_"})
_WORDS: Final = re.compile(r"[\^=, ]+")
_DATE: Final = re.compile(r"\d{8}")
_TIME: Final = re.compile(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?")


def _fold(sql: str) -> str:
    """SQL folding `sql` for fuzzy matching: NFKD, combining marks removed, lower case.
    Done in PostgreSQL on both sides, so stored names and values fold the same way."""
    return rf"lower(regexp_replace(normalize({sql}, NFKD), '[\u0300-\u036f]', '', 'g'))"


def _lower(sql: str) -> str:
    return f"lower({sql})"


def _like_escaped(sql: str) -> str:
    r"""SQL escaping LIKE's metacharacters (\ % _) in the text `sql`."""
    return rf"replace(replace(replace({sql}, '\', '\\'), '%%', '\%%'), '_', '\_')"


def like_pattern(value: str) -> str:
    """A DICOM wildcard value as a LIKE pattern: * and ? become % and _, the rest literal."""
    return value.translate(_LIKE_ESCAPE).replace("*", "%").replace("?", "_")


def _has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


@dataclass
class Params:
    """Named psycopg parameters of one statement; `add` returns the placeholder."""

    values: dict[str, Any] = field(default_factory=dict)
    prefix: str = "m"

    def add(self, value: Any) -> str:
        name = f"{self.prefix}{len(self.values)}"
        self.values[name] = value
        return f"%({name})s"


@dataclass(frozen=True)
class Unsupported:
    """A key the query named that the catalog cannot match or return at its level."""

    key: str
    reason: str


@dataclass(frozen=True)
class Compiled:
    """A query compiled: WHERE clause (over the level's aliases), its parameters, the
    attributes each match returns, and what was ignored."""

    level: Level
    where: str
    params: dict[str, Any]
    returns: tuple[Attribute, ...]
    include_all: bool
    unsupported: tuple[Unsupported, ...]
    # Include fields the catalog has no column for, answered from the representative
    # header (STUDY and SERIES levels): 8-digit hex tags.
    header_tags: tuple[str, ...] = ()


def _clean(value: str, key: str) -> str:
    request_fields.text(value, key)
    # Padding spaces are not significant in DICOM values (PS3.5 6.2).
    return value.strip(" ")


def _alternatives(value: str, key: str, most: int = MAX_LIST_VALUES) -> list[str]:
    parts = value.split("\\")
    if len(parts) > most:
        raise BadRequest(key, f"lists {len(parts)} values; at most {most} are accepted")
    return [p.strip(" ") for p in parts]


def _uid_list(attr: Attribute, value: str, key: str, params: Params) -> str:
    uids = _alternatives(value, key)
    for uid in uids:
        if not is_uid(uid):
            shown = uid if len(uid) <= 64 else uid[:64] + "…"
            raise BadRequest(
                key,
                f"{shown!r} is not a DICOM UID (digits and dots, at most 64 characters);"
                " list several with backslashes, no wildcards",
            )
    if len(uids) == 1:
        return f"{attr.column} = {params.add(uids[0])}"
    return f"{attr.column} = ANY({params.add(uids)}::text[])"


def _date(text: str, key: str) -> str:
    if not _DATE.fullmatch(text):
        raise BadRequest(key, f"{text[:64]!r} is not a date; use YYYYMMDD or a range a-b, -b, a-")
    if parse_date(text) is None:
        raise BadRequest(key, f"{text!r} is not a calendar date")
    return text


def _range(value: str, key: str) -> tuple[str, str, bool]:
    """(low, high, is_range) of a DA/TM value: "a", "a-b", "-b", "a-"."""
    if value.count("-") > 1:
        raise BadRequest(key, f"{value[:64]!r} is not a value or a range a-b, -b, a-")
    if "-" not in value:
        return value, value, False
    low, high = value.split("-")
    if not low and not high:
        raise BadRequest(key, "a range needs at least one bound (a-b, -b or a-)")
    return low, high, True


def _date_condition(attr: Attribute, value: str, key: str, params: Params) -> str:
    low, high, _ = _range(value, key)
    clauses = []
    if low:
        clauses.append(f"{attr.column} >= {params.add(_date(low, key))}::date")
    if high:
        clauses.append(f"{attr.column} <= {params.add(_date(high, key))}::date")
    if low and high and low > high:
        raise BadRequest(key, f"range {value!r} ends before it starts")
    return " AND ".join(clauses)


def _time(text: str, key: str, *, end: bool) -> str:
    """A TM bound as HHMMSS.FFFFFF; an end bound of reduced precision covers its period."""
    match = _TIME.fullmatch(text.replace(":", ""))
    if not match:
        raise BadRequest(key, f"{text[:64]!r} is not a time; use HHMMSS[.FFFFFF] or a range")
    hh, mm, ss, frac = match.groups()
    if int(hh) > 23 or int(mm or 0) > 59 or int(ss or 0) > 60:
        raise BadRequest(key, f"{text!r} is not a time of day")
    fill = "9" if end else "0"
    mm = mm or ("59" if end else "00")
    ss = ss or ("59" if end else "00")
    return f"{hh}{mm}{ss}.{(frac or '').ljust(6, fill)}"


def _stored_time(column: str) -> str:
    """A stored TM (HHMMSS[.F], also with colons) in the comparable form HHMMSS.FFFFFF."""
    t = f"replace({column}, ':', '')"
    return (
        f"(rpad(split_part({t}, '.', 1), 6, '0') || '.' || rpad(split_part({t}, '.', 2), 6, '0'))"
    )


def _time_condition(attr: Attribute, value: str, key: str, params: Params) -> str:
    low, high, _ = _range(value, key)
    stored = _stored_time(attr.column)
    clauses = [f"{attr.column} <> ''"]
    first = _time(low, key, end=False) if low else ""
    last = _time(high, key, end=True) if high else ""
    if first and last and first > last:
        raise BadRequest(key, f"range {value!r} ends before it starts")
    if first:
        clauses.append(f"{stored} >= {params.add(first)}")
    if last:
        clauses.append(f"{stored} <= {params.add(last)}")
    return " AND ".join(clauses)


def _int_condition(attr: Attribute, value: str, key: str, params: Params) -> str:
    numbers = []
    for part in _alternatives(value, key):
        try:
            number = int(part)
        except ValueError:
            raise BadRequest(key, f"{part[:64]!r} is not an integer") from None
        if not -(2**31) <= number < 2**31:
            raise BadRequest(key, f"{number} is out of range")
        numbers.append(number)
    return f"{attr.column} = ANY({params.add(numbers)}::bigint[])"


def _pn_test(sql: str, value: str, params: Params, fuzzy: bool) -> str:
    """`sql` (one person name or component group) matches `value`, ignoring case (and,
    fuzzy, accents). Exact values ignore trailing component separators: "Doe^Jane^^"
    is "Doe^Jane" (PS3.5 6.2.1)."""
    fold = _fold if fuzzy else _lower
    if _has_wildcard(value):
        return f"{fold(sql)} LIKE {fold(params.add(like_pattern(value)))} ESCAPE '\\'"
    return f"rtrim({fold(sql)}, '^') = {fold(params.add(value.rstrip('^')))}"


def _pn(col: str, value: str, key: str, params: Params, fuzzy: bool, indexed: bool) -> str:
    if fuzzy and not _has_wildcard(value):
        return _fuzzy(col, value, key, params, indexed)
    groups = value.split("=")
    if len(groups) > 3:
        raise BadRequest(key, "a person name has at most 3 component groups (a=b=c)")
    if len(groups) > 1:
        # Group by group: alphabetic=ideographic=phonetic, an empty group matches any.
        tests = [
            _pn_test(f"split_part({col}, '=', {n})", group, params, fuzzy)
            for n, group in enumerate(groups, 1)
            if group not in ("", "*")
        ]
        if indexed and not fuzzy:
            tests += [
                _group_prefilter(col, n, prefix, params)
                for n, group in enumerate(groups, 1)
                if (prefix := _literal_prefix(group))
            ]
        return " AND ".join(tests) or "TRUE"
    # The whole name, or any one of its component groups.
    whole, group = _pn_test(col, value, params, fuzzy), _pn_test("g.v", value, params, fuzzy)
    matched = (
        f"({whole} OR EXISTS (SELECT 1 FROM unnest(string_to_array({col}, '=')) AS g(v)"
        f" WHERE {group}))"
    )
    prefix = _literal_prefix(value)
    if not indexed or fuzzy or not prefix:
        return matched
    return f"{_name_prefilter(col, prefix, params)} AND {matched}"


# Name-search pre-filters: conditions every match of a PatientName value also meets, which
# the indexes of migrations/versions/0005 answer. Each is ANDed to the matching condition,
# which still decides every match: a pre-filter only lets the planner read the candidate
# patients instead of all of them. Why each is implied, for a value whose literal prefix
# (before its first wildcard; without one, the whole value less trailing ^) is L:
# - a name or group g matches only if lower(g) starts with lower(L): LIKE is anchored, and
#   lower() maps a text character by character, so it maps a prefix to a prefix. Then the
#   first 64 characters of lower(g) start with the first 64 of lower(L);
# - a name starts with its first group, so "group 1 starts with L" and "the name starts
#   with L" both put the name in the prefix index's range; groups 2 and 3 have indexes
#   of their own; a name of more groups is caught by LIKE '%=%=%=%' (a partial index);
# - fuzzy: a word w matches only if the folded name, separators made spaces, holds
#   " " + fold(w), so the first space-free piece of fold(w) begins one of the name's
#   folded words and (both cut to 32 characters) prefixes a lexeme of
#   catalog_name_words(name); a name too long to have that vector (over 256 characters)
#   is caught by its length (an index on it).
_PREFIX_CHARS: Final = 64
_WORD_CHARS: Final = 32
_WORDS_MAX_NAME: Final = 256


def _literal_prefix(value: str) -> str:
    if _has_wildcard(value):
        return re.split(r"[*?]", value, maxsplit=1)[0]
    return value.rstrip("^")


def _indexed_prefix(sql: str) -> str:
    return f"left(lower({sql}), {_PREFIX_CHARS})"


def _prefix_pattern(prefix: str, params: Params) -> str:
    """A LIKE pattern: starts with the first characters of lower(prefix)."""
    return f"({_like_escaped(_indexed_prefix(params.add(prefix)))} || '%%')"


def _name_prefilter(col: str, prefix: str, params: Params) -> str:
    """The name `col`, or one of its component groups, can start with `prefix`."""
    pattern = _prefix_pattern(prefix, params)
    groups = [f"split_part({col}, '=', {n})" for n in (2, 3)]
    arms = [f"{_indexed_prefix(sql)} LIKE {pattern}" for sql in (col, *groups)]
    return "(" + " OR ".join([*arms, f"{col} LIKE '%%=%%=%%=%%'"]) + ")"


def _group_prefilter(col: str, n: int, prefix: str, params: Params) -> str:
    """Component group `n` (1-3) of the name `col` can start with `prefix`."""
    target = col if n == 1 else f"split_part({col}, '=', {n})"
    return f"{_indexed_prefix(target)} LIKE {_prefix_pattern(prefix, params)}"


def _first_piece(word: str) -> str:
    """SQL: the first space-free piece of the folded `word` (a placeholder), cut to the
    lexeme length of catalog_name_words."""
    return f"left(split_part({_fold(word)}, ' ', 1), {_WORD_CHARS})"


def _lexeme_query(word: str) -> str:
    r"""SQL text of a tsquery term: the word's first piece, quoted (\ and ' escaped), :*
    for "a lexeme that begins with it"."""
    quoted = rf"replace(replace({_first_piece(word)}, '\', '\\'), '''', '''''')"
    return f"'''' || {quoted} || ''':*'"


def _folds_to_a_piece(word: str) -> bool:
    """Whether the folded `word` surely begins with a character that is not a space (so
    its first piece is not empty): its first character is assigned (in Python's Unicode
    database; decompositions never change once assigned), has no decomposition and is
    neither a space nor a combining mark the fold removes."""
    c = word[0]
    return (
        unicodedata.category(c) != "Cn"
        and unicodedata.decomposition(c) == ""
        and not "\u0300" <= c <= "\u036f"
        and not c.isspace()
    )


def _words_prefilter(col: str, words: list[tuple[str, str]]) -> str:
    """Each folded word (value, placeholder) can begin a folded word of the name `col`.
    The words whose first piece is surely not empty make one tsquery (one GIN search that
    intersects their lexemes); any other word gets a test of its own whose CASE folds
    away when the statement is planned with its value (an empty piece filters nothing)."""
    sure = [p for w, p in words if _folds_to_a_piece(w)]
    tests = []
    if sure:
        query = " || ' & ' || ".join(_lexeme_query(p) for p in sure)
        tests.append(f"catalog_name_words({col}) @@ ({query})::tsquery")
    for p in (p for w, p in words if not _folds_to_a_piece(w)):
        tests.append(
            f"CASE WHEN {_first_piece(p)} = '' THEN TRUE"
            f" ELSE catalog_name_words({col}) @@ ({_lexeme_query(p)})::tsquery END"
        )
    return "(" + " AND ".join(tests) + f" OR length({col}) > {_WORDS_MAX_NAME})"


def _text_one(attr: Attribute, value: str, key: str, params: Params, fuzzy: bool) -> str:
    col = attr.column
    if attr.vr == "PN":
        return _pn(col, value, key, params, fuzzy, attr.name_indexed)
    if _has_wildcard(value):
        return f"{col} LIKE {params.add(like_pattern(value))} ESCAPE '\\'"
    p = params.add(value)
    if attr.indexed:
        return f"catalog_key({col}) = catalog_key({p}) AND {col} = {p}"
    return f"{col} = {p}"


def _fuzzy(col: str, value: str, key: str, params: Params, indexed: bool) -> str:
    words = [w for w in _WORDS.split(value) if w]
    if len(words) > MAX_FUZZY_WORDS:
        raise BadRequest(
            key, f"has {len(words)} words; fuzzy matching takes at most {MAX_FUZZY_WORDS}"
        )
    if not words:
        return "TRUE"
    # Stored name with every separator a space, and a space in front: a word starts after
    # a space, so "% word%" finds a word that begins with `word`.
    stored = f"(' ' || translate({_fold(col)}, '^=,', '   '))"
    tests = []
    placeholders = []
    for w in words:
        p = params.add(w)
        tests.append(f"{stored} LIKE ('%% ' || {_like_escaped(_fold(p))} || '%%') ESCAPE '\\'")
        placeholders.append((w, p))
    if indexed:
        tests.append(_words_prefilter(col, placeholders))
    return "(" + " AND ".join(tests) + ")"


def _modalities(value: str, key: str, params: Params) -> str:
    wanted = [v for v in _alternatives(value, key) if v]
    if any(_has_wildcard(v) for v in wanted):
        pattern = params.add([like_pattern(v) for v in wanted])
        return (
            "EXISTS (SELECT 1 FROM series x WHERE x.study_fk = st.id"
            f" AND x.modality LIKE ANY({pattern}::text[]))"
        )
    return (
        "EXISTS (SELECT 1 FROM series x WHERE x.study_fk = st.id"
        f" AND x.modality = ANY({params.add(wanted)}::text[]))"
    )


def condition(attr: Attribute, value: str, key: str, params: Params, fuzzy: bool = False) -> str:
    """The SQL condition for `value` on `attr` ("" for universal matching); BadRequest
    naming `key` when the value cannot be a value of the attribute's VR."""
    value = _clean(value, key)
    if value in ("", "*"):
        return ""
    if attr.keyword == "ModalitiesInStudy":
        return _modalities(value, key, params)
    if attr.vr == "UI":
        return _uid_list(attr, value, key, params)
    if attr.vr == "DA":
        return (
            "("
            + " OR ".join(
                f"({_date_condition(attr, v, key, params)})"
                for v in _alternatives(value, key, MAX_ALTERNATIVES)
            )
            + ")"
        )
    if attr.vr == "TM":
        return (
            "("
            + " OR ".join(
                f"({_time_condition(attr, v, key, params)})"
                for v in _alternatives(value, key, MAX_ALTERNATIVES)
            )
            + ")"
        )
    if attr.vr == "IS":
        return _int_condition(attr, value, key, params)
    if attr.vr in _TEXT_VRS:
        alternatives = _alternatives(value, key, MAX_ALTERNATIVES)
        if any(v in ("", "*") for v in alternatives):
            return ""
        ors = [_text_one(attr, v, key, params, fuzzy) for v in alternatives]
        return ors[0] if len(ors) == 1 else "(" + " OR ".join(f"({o})" for o in ors) + ")"
    raise AssertionError(f"no matching for VR {attr.vr}")


def lookup(key: str, level: Level, field_name: str) -> Attribute | Unsupported | None:
    """The catalogued attribute `key` (keyword or tag) names at `level`; Unsupported when
    the catalog has none there; None for keys that are accepted and ignored. A key that
    is neither keyword nor tag is BadRequest."""
    tag, keyword = resolve(key, field_name)
    if tag in IGNORED_KEYS:
        return None
    attr = BY_TAG.get(tag)
    if attr is None:
        return Unsupported(key, f"{keyword or tag} is not catalogued")
    if attr.level > level or (attr.tag in _OWN_LEVEL_ONLY and attr.level != level):
        return Unsupported(key, f"{attr.keyword} is not an attribute of the {level.name} level")
    return attr


def compile_query(
    level: Level,
    match: Sequence[tuple[str, str]],
    include: Iterable[str] = (),
    *,
    fuzzy: bool = False,
    params: Params | None = None,
) -> Compiled:
    """Compile match keys (key, value in DICOM matching syntax; "" = return key only) and
    include fields (keyword, tag or "all") at `level`. BadRequest names the bad key as
    `match[i]` / `include_fields[i]` with the key."""
    params = params or Params()
    include = list(include)
    if len(match) + len(include) > MAX_KEYS:
        raise BadRequest("match", f"at most {MAX_KEYS} keys per query")
    clauses: list[str] = []
    returns: dict[str, Attribute] = {a.tag: a for a in REQUIRED[level]}
    unsupported: list[Unsupported] = []
    for index, (key, value) in enumerate(match):
        field_name = f"match[{index}] {key[:64]!r}"
        found = lookup(key, level, field_name)
        if isinstance(found, Unsupported):
            unsupported.append(found)
        elif found is not None:
            returns.setdefault(found.tag, found)
            sql = condition(found, value, field_name, params, fuzzy)
            if sql:
                clauses.append(sql)
    include_all = False
    header_tags: list[str] = []
    for index, key in enumerate(include):
        if key.strip().lower() == "all":
            include_all = True
            continue
        field_name = f"include_fields[{index}] {key[:64]!r}"
        found = lookup(key, level, field_name)
        if isinstance(found, Unsupported):
            tag, _ = resolve(key, field_name)
            if level in (Level.STUDY, Level.SERIES) and tag not in BY_TAG:
                # Any attribute of the representative header can be returned.
                header_tags.append(tag)
            else:
                unsupported.append(found)
        elif found is not None:
            returns.setdefault(found.tag, found)
    if include_all:
        for attr in supported(level):
            returns.setdefault(attr.tag, attr)
    where = " AND ".join(f"({c})" for c in clauses) or "TRUE"
    return Compiled(level, where, params.values, tuple(returns.values()), include_all,
                    tuple(unsupported), tuple(header_tags))  # fmt: skip


def compile_filter(keyword: str, value: str, field_name: str, params: Params) -> str:
    """One list-RPC filter (e.g. ListSeries' patient_name) in matching syntax: the SQL
    condition, "" when the value is universal. Errors name `field_name`."""
    return condition(_BY_KEYWORD[keyword], value, field_name, params)


def supported(level: Level) -> tuple[Attribute, ...]:
    """The attributes a query at `level` can match and return (for docs and conformance
    statements): the level's own and those of the levels above it."""
    return tuple(a for a in ATTRIBUTES if lookup(a.tag, level, "") is a)
