"""What a person runs: the `loopline` console script (`cli`), project scaffolding
(`scaffold`, its copier `templates`) and the operator page (`ui`). The app is the one
layer that resolves a project's task and params and hands each stage what it needs.
"""
