"""The main job: ``scrutiny audit`` and its HTML report."""

from scrutiny.audit.config import DEFAULT_EPS, AuditConfig
from scrutiny.audit.context import AuditContext, Figure, SectionResult
from scrutiny.audit.report import render_html, write_report
from scrutiny.audit.runner import AuditResult, build_context, run_audit
from scrutiny.audit.sections import SECTIONS, Section, register

__all__ = ["DEFAULT_EPS", "SECTIONS", "AuditConfig", "AuditContext", "AuditResult", "Figure",
           "Section", "SectionResult", "build_context", "register", "render_html", "run_audit",
           "write_report"]
