// Applies the saved light/dark choice before the page paints (a classic script in <head>).
// Without a saved choice the page follows the system (prefers-color-scheme).
(function () {
  try {
    var saved = localStorage.getItem("mcpmeter-theme");
    if (saved === "light" || saved === "dark") document.documentElement.dataset.theme = saved;
  } catch (e) { /* storage may be disabled: follow the system */ }
})();
