"""Same as ``python -m birnn.bench``: the side-by-side benchmark against the tutorial loop."""

from birnn.bench import main

if __name__ == "__main__":
    main()
