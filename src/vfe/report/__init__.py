"""The run's report: one content model (sections of tables, figures and notes) rendered as Markdown and
as a self-contained HTML page."""
from vfe.report.write import build_document, write_report

__all__ = ["build_document", "write_report"]
