"""``python -m fhir_alliance`` runs the ``fhir-alliance`` command."""

from fhir_alliance.cli import main

raise SystemExit(main())
