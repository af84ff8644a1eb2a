"""The main job: ``scrutiny audit`` and its HTML report."""

from scrutiny.audit.report import render_html, write_report
from scrutiny.audit.runner import DEFAULT_EPS, AuditConfig, AuditResult, Figure, run_audit

__all__ = ["DEFAULT_EPS", "AuditConfig", "AuditResult", "Figure", "render_html", "run_audit",
           "write_report"]
