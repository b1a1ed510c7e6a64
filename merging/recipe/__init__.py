"""What a merge is asked to do: the Recipe (valid when made), its codec, and mergekit import/export."""
