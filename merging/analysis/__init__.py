"""Reading merges: metrics, the narrative and headlines, the seed study, the tour and its measure cache, the deck and text reports."""
