"""Layer-wise Relevance Propagation: rules, canonizers and the LRP explainer."""
