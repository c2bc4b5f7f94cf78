"""What the engine knows of the FHIR type system: type names, subtypes, choice elements.

The engine works on JSON without StructureDefinitions, so the few facts it
needs are listed here: which element names are choice types (``value[x]``),
which types are primitives (their JSON suffix is lowercased: ``valueString`` is
a ``string``), which primitives specialise which (``code`` is a ``string``),
and which resource types exist (R4 and R5), to refuse a view on a misspelt one.
"""

from __future__ import annotations

PRIMITIVE_TYPES = frozenset(
    {
        "base64Binary", "boolean", "canonical", "code", "date", "dateTime", "decimal", "id",
        "instant", "integer", "integer64", "markdown", "oid", "positiveInt", "string", "time",
        "unsignedInt", "uri", "url", "uuid", "xhtml",
    }
)  # fmt: skip

COMPLEX_TYPES = frozenset(
    {
        "Address", "Age", "Annotation", "Attachment", "BackboneElement", "CodeableConcept",
        "CodeableReference", "Coding", "ContactDetail", "ContactPoint", "Contributor", "Count",
        "DataRequirement", "Distance", "Dosage", "Duration", "Element", "ElementDefinition",
        "Expression", "Extension", "HumanName", "Identifier", "Meta", "Money", "Narrative",
        "ParameterDefinition", "Period", "Quantity", "Range", "Ratio", "RatioRange",
        "Reference", "RelatedArtifact", "SampledData", "Signature", "SimpleQuantity", "Timing",
        "TriggerDefinition", "UsageContext", "Availability", "ExtendedContactDetail",
        "VirtualServiceDetail", "MonetaryComponent", "Resource", "DomainResource",
    }
)  # fmt: skip

#: FHIR specialisations among primitives: child -> parent.
_PARENT = {
    "code": "string",
    "id": "string",
    "markdown": "string",
    "url": "uri",
    "canonical": "uri",
    "oid": "uri",
    "uuid": "uri",
    "positiveInt": "integer",
    "unsignedInt": "integer",
    "Age": "Quantity",
    "Count": "Quantity",
    "Distance": "Quantity",
    "Duration": "Quantity",
    "MoneyQuantity": "Quantity",
    "SimpleQuantity": "Quantity",
}

#: FHIRPath System types and the FHIR type they correspond to.
_SYSTEM = {
    "String": "string",
    "Boolean": "boolean",
    "Integer": "integer",
    "Decimal": "decimal",
    "Date": "date",
    "DateTime": "dateTime",
    "Time": "time",
    "Quantity": "Quantity",
}


def normalize_type(name: str) -> str:
    """``FHIR.Quantity`` -> ``Quantity``, ``System.String`` -> ``string``; a URL -> its last part."""
    if name.startswith("http://hl7.org/fhir/StructureDefinition/"):
        return name.rsplit("/", 1)[1]
    if name.startswith("System."):
        return _SYSTEM.get(name[7:], name[7:])
    if name.startswith("FHIR."):
        name = name[5:]
    lowered = name[:1].lower() + name[1:]
    if name[:1].isupper() and lowered in PRIMITIVE_TYPES:  # ofType(Instant), ofType(Time)
        return lowered
    return name


def is_known_type(name: str) -> bool:
    """Whether ``name`` is a FHIR or FHIRPath System type (``Observation.component`` too)."""
    if name.startswith("System."):
        return name[7:] in _SYSTEM or name[7:] in ("Time", "DateTime")
    type_name = normalize_type(name)
    base = type_name.split(".", 1)[0]
    return (
        type_name in PRIMITIVE_TYPES
        or base in COMPLEX_TYPES
        or base in RESOURCE_TYPES
        or type_name in _PARENT
    )


def subtypes(type_name: str) -> list[str]:
    """``type_name`` and the types that specialise it (``uri``: uri, url, canonical, oid, uuid)."""
    found = [type_name]
    for child in _PARENT:
        if is_subtype(child, type_name):
            found.append(child)
    return found


def is_subtype(actual: str, wanted: str) -> bool:
    """Whether a value of FHIR type ``actual`` is also a ``wanted`` (``code`` is a ``string``)."""
    while actual in _PARENT:
        actual = _PARENT[actual]
        if actual == wanted:
            return True
    return False


#: Element names that are choice types (``[x]``) somewhere in FHIR R4/R5 resources and data types.
CHOICE_ELEMENTS = frozenset(
    {
        "value", "effective", "onset", "abatement", "deceased", "multipleBirth", "medication",
        "occurrence", "performed", "born", "age", "timing", "product", "defaultValue",
        "fixed", "pattern", "minValue", "maxValue", "serviced", "location", "reported",
        "asNeeded", "dose", "rate", "allowed", "used", "collected", "subject", "content",
        "diagnosis", "procedure", "doseNumber", "seriesDoses", "detail", "due", "scheduled",
        "legallyBinding", "answer", "initial", "enableWhen", "definition", "topic", "item",
    }
)  # fmt: skip

RESOURCE_TYPES = frozenset(
    {
        "Account", "ActivityDefinition", "ActorDefinition", "AdministrableProductDefinition",
        "AdverseEvent", "AllergyIntolerance", "Appointment", "AppointmentResponse",
        "ArtifactAssessment", "AuditEvent", "Basic", "Binary", "BiologicallyDerivedProduct",
        "BiologicallyDerivedProductDispense", "BodyStructure", "Bundle", "CapabilityStatement",
        "CarePlan", "CareTeam", "CatalogEntry", "ChargeItem", "ChargeItemDefinition", "Citation",
        "Claim", "ClaimResponse", "ClinicalImpression", "ClinicalUseDefinition", "CodeSystem",
        "Communication", "CommunicationRequest", "CompartmentDefinition", "Composition",
        "ConceptMap", "Condition", "ConditionDefinition", "Consent", "Contract", "Coverage",
        "CoverageEligibilityRequest", "CoverageEligibilityResponse", "DetectedIssue", "Device",
        "DeviceAssociation", "DeviceDefinition", "DeviceDispense", "DeviceMetric",
        "DeviceRequest", "DeviceUsage", "DeviceUseStatement", "DiagnosticReport",
        "DocumentManifest", "DocumentReference", "EffectEvidenceSynthesis", "Encounter",
        "EncounterHistory", "Endpoint", "EnrollmentRequest", "EnrollmentResponse",
        "EpisodeOfCare", "EventDefinition", "Evidence", "EvidenceReport", "EvidenceVariable",
        "ExampleScenario", "ExplanationOfBenefit", "FamilyMemberHistory", "Flag",
        "FormularyItem", "GenomicStudy", "Goal", "GraphDefinition", "Group", "GuidanceResponse",
        "HealthcareService", "ImagingSelection", "ImagingStudy", "Immunization",
        "ImmunizationEvaluation", "ImmunizationRecommendation", "ImplementationGuide",
        "Ingredient", "InsurancePlan", "InventoryItem", "InventoryReport", "Invoice", "Library",
        "Linkage", "List", "Location", "ManufacturedItemDefinition", "Measure", "MeasureReport",
        "Media", "Medication", "MedicationAdministration", "MedicationDispense",
        "MedicationKnowledge", "MedicationRequest", "MedicationStatement",
        "MedicinalProduct", "MedicinalProductDefinition", "MessageDefinition", "MessageHeader",
        "MolecularDefinition", "MolecularSequence", "NamingSystem", "NutritionIntake",
        "NutritionOrder", "NutritionProduct", "Observation", "ObservationDefinition",
        "OperationDefinition", "OperationOutcome", "Organization", "OrganizationAffiliation",
        "PackagedProductDefinition", "Parameters", "Patient", "PaymentNotice",
        "PaymentReconciliation", "Permission", "Person", "PlanDefinition", "Practitioner",
        "PractitionerRole", "Procedure", "Provenance", "Questionnaire", "QuestionnaireResponse",
        "RegulatedAuthorization", "RelatedPerson", "RequestGroup", "RequestOrchestration",
        "Requirements", "ResearchDefinition", "ResearchElementDefinition", "ResearchStudy",
        "ResearchSubject", "RiskAssessment", "RiskEvidenceSynthesis", "Schedule",
        "SearchParameter", "ServiceRequest", "Slot", "Specimen", "SpecimenDefinition",
        "StructureDefinition", "StructureMap", "Subscription", "SubscriptionStatus",
        "SubscriptionTopic", "Substance", "SubstanceDefinition", "SubstanceNucleicAcid",
        "SubstancePolymer", "SubstanceProtein", "SubstanceReferenceInformation",
        "SubstanceSourceMaterial", "SupplyDelivery", "SupplyRequest", "Task",
        "TerminologyCapabilities", "TestPlan", "TestReport", "TestScript", "Transport",
        "ValueSet", "VerificationResult", "VisionPrescription",
    }
)  # fmt: skip
