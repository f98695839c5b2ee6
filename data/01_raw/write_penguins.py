"""Write the Palmer penguins table (the ``palmerpenguins`` package's copy) as a CSV file.

Run once to (re)create ``data/01_raw/penguins.csv``; the file is committed so that the
table runs (``--env penguins``, ``--env penguins_mass``) need neither the package nor a
network. 344 penguins of three species: island, bill, flipper and body-mass measurements,
sex and study year. Missing values stay missing (empty cells), as a real table has them.
Data: Gorman, Williams and Fraser (2014), Palmer Station LTER; CC0, packaged under MIT.
"""

from pathlib import Path

from palmerpenguins import load_penguins


def main(out_path: Path = Path(__file__).parent / "penguins.csv") -> None:
    # convert_dtypes keeps whole-number columns with gaps as integers ("181", not "181.0").
    penguins = load_penguins().convert_dtypes()
    penguins.to_csv(out_path, index=False, lineterminator="\n")


if __name__ == "__main__":
    main()
