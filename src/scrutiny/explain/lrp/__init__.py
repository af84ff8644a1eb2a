"""Layer-wise Relevance Propagation: rules, canonizers and the LRP explainer."""

from scrutiny.explain.lrp.canonizers import canonize, merge_batchnorm
from scrutiny.explain.lrp.explainer import LRP, MAXPOOL_MODES, lrp
from scrutiny.explain.lrp.rules import (
    RULES,
    Rule,
    Term,
    alpha_beta_rule,
    epsilon_rule,
    gamma_rule,
    make_rule,
    propagate,
    zbox_rule,
    zplus_rule,
)

__all__ = ["LRP", "MAXPOOL_MODES", "RULES", "Rule", "Term", "alpha_beta_rule", "canonize",
           "epsilon_rule", "gamma_rule", "lrp", "make_rule", "merge_batchnorm", "propagate",
           "zbox_rule", "zplus_rule"]
