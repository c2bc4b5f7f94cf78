"""Deterministic synthetic clinical data for the sandbox EHR.

Everything derives from ``(seed, patient index)``: patient ``patient-00007`` is
the same person whether 10 or 10,000 patients are generated, and the same seed
always yields byte-identical resources. Time runs up to a fixed anchor date
(not "now"), so that a restart months later serves the same data and tests can
hard-code dates.

Resources are yielded as :class:`Row` objects that already hold the resource's
JSON bytes (built with orjson) and its search-index entries, so that the store
only inserts: at 10,000 patients the generator produces millions of
Observations, and every microsecond per Observation shows.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import orjson

#: Data ends here (UTC); histories run backwards from it.
ANCHOR = datetime(2025, 6, 30, 17, 0, tzinfo=timezone.utc)
ANCHOR_TS = int(ANCHOR.timestamp())
LAST_UPDATED = "2025-07-01T00:00:00Z"
META = {"versionId": "1", "lastUpdated": LAST_UPDATED}

MRN_SYSTEM = "http://sandbox.jupyterhub-smart.org/fhir/mrn"
NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VER = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"

FAMILY = [
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor",
    "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez",
    "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright",
    "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green", "Adams", "Nelson", "Baker", "Hall",
    "Rivera", "Campbell", "Mitchell", "Carter", "Roberts", "Müller", "Schmidt", "Okafor", "Kowalski",
]  # fmt: skip
GIVEN = {
    "female": [
        "Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan", "Jessica",
        "Sarah", "Karen", "Lisa", "Nancy", "Betty", "Sandra", "Margaret", "Ashley", "Emily",
        "Donna", "Michelle", "Carol", "Amanda", "Melissa", "Deborah", "Stephanie", "Zoë", "Amara",
    ],
    "male": [
        "James", "Robert", "John", "Michael", "David", "William", "Richard", "Joseph", "Thomas",
        "Christopher", "Charles", "Daniel", "Matthew", "Anthony", "Mark", "Donald", "Steven",
        "Andrew", "Paul", "Joshua", "Kenneth", "Kevin", "Brian", "George", "José", "Chidi",
    ],
}  # fmt: skip
GIVEN["other"] = GIVEN["female"][::2] + GIVEN["male"][::2]
GIVEN["unknown"] = GIVEN["other"]

PRACTITIONERS = [
    ("practitioner-1", "Alice", "Carter", "1234567893"),
    ("practitioner-2", "Bernard", "Osei", "1245319599"),
    ("practitioner-3", "Chen", "Wei", "1679576722"),
    ("practitioner-4", "Dolores", "Ibarra", "1841293990"),
]

#: (SNOMED code, display, prevalence, RxNorm medication or None)
CONDITIONS = [
    ("38341003", "Hypertensive disorder, systemic arterial", 0.35,
     ("314076", "lisinopril 10 MG Oral Tablet", "Take 1 tablet by mouth once daily")),
    ("44054006", "Diabetes mellitus type 2", 0.15,
     ("860975", "24 HR metformin hydrochloride 500 MG Extended Release Oral Tablet",
      "Take 1 tablet by mouth with the evening meal")),
    ("55822004", "Hyperlipidemia", 0.25,
     ("617312", "atorvastatin 20 MG Oral Tablet", "Take 1 tablet by mouth at bedtime")),
    ("195967001", "Asthma", 0.08,
     ("745679", "200 ACTUAT albuterol 0.09 MG/ACTUAT Metered Dose Inhaler",
      "Inhale 2 puffs every 4 to 6 hours as needed")),
    ("414916001", "Obesity", 0.2, None),
    ("709044004", "Chronic kidney disease", 0.05, None),
    ("35489007", "Depressive disorder", 0.1,
     ("312938", "sertraline 50 MG Oral Tablet", "Take 1 tablet by mouth once daily")),
]  # fmt: skip

TIMEZONES = [
    timezone(timedelta(hours=-5)),
    timezone(timedelta(hours=-6)),
    timezone(timedelta(hours=-8)),
    timezone(timedelta(hours=1)),
    timezone.utc,
]


def _coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


_VITAL = [{"coding": [_coding(OBS_CATEGORY, "vital-signs", "Vital Signs")]}]
_LAB = [{"coding": [_coding(OBS_CATEGORY, "laboratory", "Laboratory")]}]
_HR = {"coding": [_coding(LOINC, "8867-4", "Heart rate")], "text": "Heart rate"}
_BP = {
    "coding": [_coding(LOINC, "85354-9", "Blood pressure panel with all children optional")],
    "text": "Blood pressure",
}
_SYS = {"coding": [_coding(LOINC, "8480-6", "Systolic blood pressure")]}
_DIA = {"coding": [_coding(LOINC, "8462-4", "Diastolic blood pressure")]}
_WEIGHT = {"coding": [_coding(LOINC, "29463-7", "Body weight")], "text": "Body weight"}
_BMI = {"coding": [_coding(LOINC, "39156-5", "Body mass index (BMI) [Ratio]")], "text": "BMI"}
_GLUCOSE = {
    "coding": [_coding(LOINC, "2339-0", "Glucose [Mass/volume] in Blood")],
    "text": "Glucose",
}
_ENCOUNTER_CLASS = {"system": ACT_CODE, "code": "AMB", "display": "ambulatory"}
_CHECKUP = [{"coding": [_coding(SNOMED, "185349003", "Encounter for check up (procedure)")]}]

# Search-index entries shared by many rows (tuples are immutable, so sharing is safe).
_TOK_VITAL = ("category", OBS_CATEGORY, "vital-signs")
_TOK_LAB = ("category", OBS_CATEGORY, "laboratory")


@dataclass(frozen=True)
class Row:
    """One resource ready for insertion: identity, index columns and JSON bytes."""

    resource_type: str
    id: str
    #: Id of the Patient whose compartment holds the resource (its own id for a Patient).
    patient: str | None
    #: Search date range in Unix seconds, ``[date_start, date_end)``; ``None`` if undated.
    date_start: int | None
    date_end: int | None
    json: bytes
    #: ``(param, system, value)`` search-index entries.
    tokens: tuple[tuple[str, str | None, str], ...]


def patient_id(index: int) -> str:
    """Readable, stable, sortable id of the ``index``-th patient (1-based)."""
    return f"patient-{index:05d}"


def _iso(ts: int, tz: timezone) -> str:
    return datetime.fromtimestamp(ts, tz).isoformat()


def _q(value: float, unit: str, code: str) -> dict[str, object]:
    return {"value": value, "unit": unit, "system": UCUM, "code": code}


def normalise_text(text: str) -> str:
    """Case- and accent-insensitive form used by FHIR string search."""
    import unicodedata

    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def practitioners() -> Iterator[Row]:
    """The sandbox's clinicians; the first is the default user of ``--auto-approve``."""
    for pid, given, family, npi in PRACTITIONERS:
        resource = {
            "resourceType": "Practitioner",
            "id": pid,
            "meta": META,
            "active": True,
            "identifier": [{"system": NPI_SYSTEM, "value": npi}],
            "name": [{"use": "official", "family": family, "given": [given], "prefix": ["Dr."]}],
        }
        yield Row(
            "Practitioner",
            pid,
            None,
            None,
            None,
            orjson.dumps(resource),
            (
                ("name", None, normalise_text(given)),
                ("name", None, normalise_text(family)),
                ("identifier", NPI_SYSTEM, npi),
            ),
        )


class _PatientGenerator:
    """Generates one patient's record from its own random stream."""

    def __init__(self, seed: int, index: int, pid: str | None = None) -> None:
        self.rng = random.Random(f"{seed}:{index}")
        self.index = index
        self.pid = pid or patient_id(index)
        self.ref = {"reference": f"Patient/{self.pid}"}
        self.tz = self.rng.choice(TIMEZONES)

    def patient(self) -> tuple[Row, int]:
        rng = self.rng
        roll = rng.random()
        gender = "female" if roll < 0.49 else "male" if roll < 0.98 else "other"
        family = rng.choice(FAMILY)
        given = [rng.choice(GIVEN[gender])]
        if rng.random() < 0.4:
            given.append(rng.choice(GIVEN[gender]))
        age_days = rng.randint(18 * 365, 90 * 365)
        birth = (ANCHOR - timedelta(days=age_days)).date()
        birth_start = int(
            datetime(birth.year, birth.month, birth.day, tzinfo=timezone.utc).timestamp()
        )
        mrn = f"{(self.index * 7919 + rng.randint(0, 999)) % 10_000_000:07d}"
        gp = PRACTITIONERS[self.index % len(PRACTITIONERS)][0]
        resource = {
            "resourceType": "Patient",
            "id": self.pid,
            "meta": META,
            "identifier": [
                {
                    "use": "usual",
                    "type": {"coding": [_coding(V2_0203, "MR", "Medical record number")]},
                    "system": MRN_SYSTEM,
                    "value": mrn,
                }
            ],
            "active": True,
            "name": [{"use": "official", "family": family, "given": given}],
            "gender": gender,
            "birthDate": birth.isoformat(),
            "generalPractitioner": [{"reference": f"Practitioner/{gp}"}],
        }
        tokens: list[tuple[str, str | None, str]] = [
            ("family", None, normalise_text(family)),
            ("name", None, normalise_text(family)),
            ("gender", "http://hl7.org/fhir/administrative-gender", gender),
            ("identifier", MRN_SYSTEM, mrn),
        ]
        for g in given:
            tokens.append(("given", None, normalise_text(g)))
            tokens.append(("name", None, normalise_text(g)))
        row = Row(
            "Patient",
            self.pid,
            self.pid,
            birth_start,
            birth_start + 86400,
            orjson.dumps(resource),
            tuple(dict.fromkeys(tokens)),
        )
        return row, age_days

    def record(self, age_days: int) -> Iterator[Row]:
        """Conditions, MedicationRequests, Encounters with vital signs and labs."""
        rng = self.rng
        pid, ref, tz = self.pid, self.ref, self.tz
        history_days = rng.randint(365, max(365, min(12 * 365, age_days - 17 * 365)))
        start = ANCHOR_TS - history_days * 86400
        conditions = [c for c in CONDITIONS if rng.random() < c[2]]
        for n, (code, display, _, medication) in enumerate(conditions, 1):
            onset = start + rng.randint(0, history_days) * 86400 // 2
            cid = f"{pid}-cond-{n}"
            condition = {
                "resourceType": "Condition",
                "id": cid,
                "meta": META,
                "clinicalStatus": {"coding": [_coding(CONDITION_CLINICAL, "active", "Active")]},
                "verificationStatus": {
                    "coding": [_coding(CONDITION_VER, "confirmed", "Confirmed")]
                },
                "category": [
                    {
                        "coding": [
                            _coding(CONDITION_CATEGORY, "problem-list-item", "Problem List Item")
                        ]
                    }
                ],
                "code": {"coding": [_coding(SNOMED, code, display)], "text": display},
                "subject": ref,
                "onsetDateTime": _iso(onset, tz),
                "recordedDate": _iso(onset, tz),
            }
            yield Row(
                "Condition", cid, pid, onset, onset + 1, orjson.dumps(condition),
                (("code", SNOMED, code),),
            )  # fmt: skip
            if medication is not None:
                rx, rx_display, dosage = medication
                mid = f"{pid}-med-{n}"
                request = {
                    "resourceType": "MedicationRequest",
                    "id": mid,
                    "meta": META,
                    "status": "active",
                    "intent": "order",
                    "medicationCodeableConcept": {
                        "coding": [_coding(RXNORM, rx, rx_display)],
                        "text": rx_display,
                    },
                    "subject": ref,
                    "authoredOn": _iso(onset + 3600, tz),
                    "requester": {"reference": f"Practitioner/{PRACTITIONERS[n % 4][0]}"},
                    "reasonReference": [{"reference": f"Condition/{cid}"}],
                    "dosageInstruction": [{"text": dosage}],
                }
                yield Row(
                    "MedicationRequest", mid, pid, onset + 3600, onset + 3601,
                    orjson.dumps(request), (("code", RXNORM, rx),),
                )  # fmt: skip

        codes = {c[0] for c in conditions}
        hypertensive = "38341003" in codes
        diabetic = "44054006" in codes
        height = rng.gauss(1.70 if rng.random() < 0.5 else 1.62, 0.08)
        weight = max(40.0, rng.gauss(30.0 if "414916001" in codes else 25.0, 3.5) * height**2)
        hr_base = rng.gauss(72, 7)
        sys_base = rng.gauss(138 if hypertensive else 118, 8)
        glucose_base = rng.gauss(150 if diabetic else 92, 10)
        t = start + rng.randint(0, 30) * 86400
        visit = 0
        practitioner = {"reference": f"Practitioner/{PRACTITIONERS[self.index % 4][0]}"}
        obs_n = 0
        while t < ANCHOR_TS:
            visit += 1
            # Office hours in the patient's own time zone, at whole minutes.
            day = t - (t % 86400)
            local = (
                day + rng.randint(8 * 60, 17 * 60) * 60 - int(tz.utcoffset(None).total_seconds())
            )
            eid = f"{pid}-enc-{visit:04d}"
            enc_ref = {"reference": f"Encounter/{eid}"}
            end = local + 1800
            encounter = {
                "resourceType": "Encounter",
                "id": eid,
                "meta": META,
                "status": "finished",
                "class": _ENCOUNTER_CLASS,
                "type": _CHECKUP,
                "subject": ref,
                "participant": [{"individual": practitioner}],
                "period": {"start": _iso(local, tz), "end": _iso(end, tz)},
            }
            yield Row("Encounter", eid, pid, local, end + 1, orjson.dumps(encounter), ())
            when = _iso(local + 600, tz)
            ts = local + 600
            weight += rng.gauss(0, 0.6)
            obs: list[tuple[dict[str, object], tuple[tuple[str, str | None, str], ...]]] = []
            base: dict[str, object] = {
                "resourceType": "Observation",
                "id": "",  # set below; keeps "id" second in the JSON, as FHIR examples do
                "meta": META,
                "status": "final",
                "subject": ref,
                "encounter": enc_ref,
                "effectiveDateTime": when,
            }
            obs.append(
                (
                    {
                        **base,
                        "category": _VITAL,
                        "code": _HR,
                        "valueQuantity": _q(round(rng.gauss(hr_base, 6)), "beats/minute", "/min"),
                    },
                    (_TOK_VITAL, ("code", LOINC, "8867-4")),
                )
            )
            systolic = round(rng.gauss(sys_base, 9))
            diastolic = round(systolic * rng.uniform(0.58, 0.68))
            obs.append(
                (
                    {
                        **base,
                        "category": _VITAL,
                        "code": _BP,
                        "component": [
                            {"code": _SYS, "valueQuantity": _q(systolic, "mmHg", "mm[Hg]")},
                            {"code": _DIA, "valueQuantity": _q(diastolic, "mmHg", "mm[Hg]")},
                        ],
                    },
                    (_TOK_VITAL, ("code", LOINC, "85354-9")),
                )
            )
            if visit % 2 == 1 or rng.random() < 0.3:
                obs.append(
                    (
                        {
                            **base,
                            "category": _VITAL,
                            "code": _WEIGHT,
                            "valueQuantity": _q(round(weight, 1), "kg", "kg"),
                        },
                        (_TOK_VITAL, ("code", LOINC, "29463-7")),
                    )
                )
                obs.append(
                    (
                        {
                            **base,
                            "category": _VITAL,
                            "code": _BMI,
                            "valueQuantity": _q(round(weight / height**2, 1), "kg/m2", "kg/m2"),
                        },
                        (_TOK_VITAL, ("code", LOINC, "39156-5")),
                    )
                )
            if diabetic or rng.random() < 0.35:
                obs.append(
                    (
                        {
                            **base,
                            "category": _LAB,
                            "code": _GLUCOSE,
                            "valueQuantity": _q(
                                round(max(50.0, rng.gauss(glucose_base, 18))), "mg/dL", "mg/dL"
                            ),
                        },
                        (_TOK_LAB, ("code", LOINC, "2339-0")),
                    )
                )
            for resource, tokens in obs:
                obs_n += 1
                oid = f"{pid}-obs-{obs_n:05d}"
                resource["id"] = oid
                yield Row("Observation", oid, pid, ts, ts + 1, orjson.dumps(resource), tokens)
            t += rng.randint(14, 50) * 86400


def patient_rows(seed: int, index: int) -> Iterator[Row]:
    """Every resource of the ``index``-th synthetic patient (1-based)."""
    generator = _PatientGenerator(seed, index)
    row, age_days = generator.patient()
    yield row
    yield from generator.record(age_days)


def dense_rows(seed: int, observations: int) -> Iterator[Row]:
    """Patient ``dense`` with ``observations`` heart-rate/glucose readings (home monitoring).

    For benchmarks of clients that page through one patient's long record.
    """
    generator = _PatientGenerator(seed, 0, pid="dense")
    row, _ = generator.patient()
    yield row
    rng = generator.rng
    ref, tz = generator.ref, generator.tz
    ts = ANCHOR_TS - observations * 900
    for n in range(1, observations + 1):
        ts += 900
        lab = n % 10 == 0
        oid = f"dense-obs-{n:06d}"
        resource = {
            "resourceType": "Observation",
            "id": oid,
            "meta": META,
            "status": "final",
            "category": _LAB if lab else _VITAL,
            "code": _GLUCOSE if lab else _HR,
            "subject": ref,
            "effectiveDateTime": _iso(ts, tz),
            "valueQuantity": _q(round(rng.gauss(100, 15)), "mg/dL", "mg/dL")
            if lab
            else _q(round(rng.gauss(75, 9)), "beats/minute", "/min"),
        }
        tokens: tuple[tuple[str, str | None, str], ...] = (
            (_TOK_LAB, ("code", LOINC, "2339-0"))
            if lab
            else (_TOK_VITAL, ("code", LOINC, "8867-4"))
        )
        yield Row("Observation", oid, "dense", ts, ts + 1, orjson.dumps(resource), tokens)


def generate(patients: int, seed: int, dense_patient_observations: int = 0) -> Iterator[Row]:
    """All rows of a sandbox data set, in a deterministic order."""
    yield from practitioners()
    for index in range(1, patients + 1):
        yield from patient_rows(seed, index)
    if dense_patient_observations > 0:
        yield from dense_rows(seed, dense_patient_observations)
