"""What the dataset (EDA) report and the search report share: the offline HTML page,
figure helpers and the guard that keeps patient identifiers off every page."""
