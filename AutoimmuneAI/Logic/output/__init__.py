"""What a user sees: MRML nodes and scenes, snapshots, evaluation figures and the HTML report."""
