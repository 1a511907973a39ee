"""The commands that chain the stages: validate, evaluate and the demo."""
