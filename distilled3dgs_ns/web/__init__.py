"""The report page's viewer script (package data: ``viewer.js``)."""
