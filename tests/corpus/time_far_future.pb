
?
 

service.name
corpus-entry	ÿÿÿÿÿÿÿÿ	*

far future