"""mergescope's library: LoRA adapters, merge methods, DO-Merging, OSRM, metrics, evaluation.

Importable and testable without Streamlit; the dashboard in app.py and pages/ only calls into it.
"""

__version__ = "0.1.0"
