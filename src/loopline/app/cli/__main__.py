"""`python -m loopline.app.cli`: the same as the `loopline` console script."""

from loopline.app.cli import main

if __name__ == "__main__":
    main()
