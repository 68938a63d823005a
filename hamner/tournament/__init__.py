"""Architecture tournaments: fair, resumable comparisons of model variants, one command each.

spec     the TOML format (`hamner/tournaments/*.toml`) and its checks
fitting  a curriculum fitted to a round's token budget; what entrants' curricula must share
sizing   sizes counted from the model on the meta device; resizing an entrant to the base
runs     one run: an ordinary run directory, trained, resumed or skipped, then read back
rounds   the elimination rounds, the LR sweep, ranking and ties
report   report.json, report.md and the plots
cli      `main(argv)` of `hamner tournament SPEC.toml`
"""
