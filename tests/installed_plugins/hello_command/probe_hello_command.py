"""A command an installed package adds to `probe` through the ``probe.commands`` entry-point group; the
module imports nothing heavy, so `probe --help`, which imports it to show its help line, stays quick."""

import click


@click.command()
@click.option("--who", default="world", show_default=True)
def hello(who):
    """Say hello from an installed package."""
    import sklearn  # heavy libraries inside the command: imported only when it runs

    click.echo(f"hello {who} (scikit-learn {sklearn.__version__})")
